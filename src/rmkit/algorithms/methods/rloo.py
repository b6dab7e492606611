"""RLOO (REINFORCE leave-one-out): each completion's baseline is the mean reward of the *other*
completions of its prompt.

``A_i = r_i - (sum_g - r_i) / (G - 1) = G / (G - 1) * (r_i - mean_g)``, broadcast to every token
of completion i; no std scaling; no KL by default (``k3_loss`` available); per-sequence mean of
the token losses. The baseline does not contain r_i, so the estimate stays unbiased.
"""

from __future__ import annotations

from rmkit.algorithms.base import Algorithm, Settings, register


@register
class RLOO(Algorithm):
    name = "rloo"
    summary = "leave-one-out baseline r_i - mean of the other completions, no std, no KL"
    needs_groups = True
    kl_modes = ("none", "k3_loss")
    defaults = Settings(kl_mode="none", kl_coef=0.0, aggregation="seq_mean")

    def advantages(self, rewards, mask, settings, *, group_size=1, token_kl=None):
        import torch

        from rmkit.algorithms.advantages import group_advantages

        centred = group_advantages(rewards, group_size, scale_std=False)
        seq = centred * (group_size / (group_size - 1))
        return torch.where(mask.bool(), seq.unsqueeze(1).to(torch.float32), 0.0), {}
