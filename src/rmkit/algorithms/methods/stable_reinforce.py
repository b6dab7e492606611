"""StableReinforce (R1-Reward): Reinforce++ with the log-ratio pre-clip and a 3-sigma filter on
the whitened advantages.

Filter rules (``rl.filter_rule``):

* ``paper``: zero the advantages whose z-score within the batch exceeds ``filter_sigma``
  (:func:`rmkit.algorithms.advantages.outlier_filter`);
* ``released``: the released R1-Reward code's rule: keep whitened advantages within
  ``raw mean +- filter_sigma`` (the mean of the returns *before* whitening), then zero
  |A| > 10 and NaN (:func:`rmkit.algorithms.advantages.released_outlier_filter`). Once about
  two thirds of a batch is right, this zeroes every wrong answer's advantage.

KL 0 by default, as in the paper (the released script uses k1 1e-3).
"""

from __future__ import annotations

from rmkit.algorithms.base import Settings, register
from rmkit.algorithms.methods.reinforce_pp import ReinforcePP


@register
class StableReinforce(ReinforcePP):
    name = "stable_reinforce"
    summary = "Reinforce++ + log-ratio pre-clip + 3-sigma advantage filter (paper or released)"
    filter_rules = ("paper", "released")
    defaults = Settings(
        kl_mode="k1_reward", kl_coef=0.0, aggregation="seq_mean", preclip=True,
        reward_clip=10.0, filter_rule="paper", filter_sigma=3.0,
    )  # fmt: skip

    def advantages(self, rewards, mask, settings, *, group_size=1, token_kl=None):
        from rmkit.algorithms.advantages import (
            masked_whiten,
            outlier_filter,
            released_outlier_filter,
        )

        raw = self.returns(rewards, mask, settings, group_size, token_kl)
        z = masked_whiten(raw, mask)
        sigma = settings.filter_sigma or 3.0
        if settings.filter_rule == "released":
            adv, _, frac = released_outlier_filter(z, raw, mask, sigma=sigma)
        else:
            adv, _, frac = outlier_filter(z, mask, sigma=sigma)
        return adv, {"adv/filtered_frac": frac}
