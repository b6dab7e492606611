"""Reinforce++ (R1-Reward's base): one completion per prompt, no critic, returns whitened over
the whole rollout batch.

Sequence rewards are clipped to [-10, 10]; with several completions per prompt the prompt's mean
is subtracted first; ``-beta * k1`` goes on every token and the reward on the last one; returns
with gamma 1 are whitened over all valid tokens of the batch (population variance, floored at
1e-8). Losses: per-sequence mean, as OpenRLHF's policy loss.
"""

from __future__ import annotations

from rmkit.algorithms.base import Algorithm, Settings, register


@register
class ReinforcePP(Algorithm):
    name = "reinforce_pp"
    summary = "batch-whitened token returns, k1 KL in the reward, rewards clipped to +-10"
    kl_modes = ("none", "k1_reward", "k3_loss")
    defaults = Settings(kl_mode="k1_reward", kl_coef=1e-3, aggregation="seq_mean", reward_clip=10.0)

    def returns(self, rewards, mask, settings, group_size, token_kl):
        """Token returns (B, T) before whitening."""
        from rmkit.algorithms.advantages import reinforce_pp_returns

        use_kl = settings.kl_mode == "k1_reward" and token_kl is not None
        return reinforce_pp_returns(
            rewards, mask, token_kl=token_kl if use_kl else None, kl_coef=settings.kl_coef,
            reward_clip=settings.reward_clip, group_size=group_size,
        )  # fmt: skip

    def advantages(self, rewards, mask, settings, *, group_size=1, token_kl=None):
        from rmkit.algorithms.advantages import masked_whiten

        return masked_whiten(self.returns(rewards, mask, settings, group_size, token_kl), mask), {}
