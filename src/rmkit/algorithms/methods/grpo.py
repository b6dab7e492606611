"""GRPO (UnifiedReward-Think): group-normalised advantages and a k3 KL term in the loss.

``A_i = (r_i - mean_g) / (std_g + 1e-4)`` with the sample std of the prompt's group (TRL's
form), broadcast to every token of completion i; ``beta * k3`` per token in the loss (beta 0.04);
per-sequence mean of the token losses.
"""

from __future__ import annotations

from rmkit.algorithms.base import Algorithm, Settings, register


@register
class GRPO(Algorithm):
    name = "grpo"
    summary = "group advantages (r - mean) / (std + 1e-4), k3 KL in the loss, per-sequence mean"
    needs_groups = True
    kl_modes = ("none", "k3_loss")
    defaults = Settings(kl_mode="k3_loss", kl_coef=0.04, aggregation="seq_mean")
    scale_std = True  # divide by the group's sample std
    eps = 1e-4

    def advantages(self, rewards, mask, settings, *, group_size=1, token_kl=None):
        import torch

        from rmkit.algorithms.advantages import group_advantages

        seq = group_advantages(rewards, group_size, scale_std=self.scale_std, eps=self.eps)
        return torch.where(mask.bool(), seq.unsqueeze(1).to(torch.float32), 0.0), {}
