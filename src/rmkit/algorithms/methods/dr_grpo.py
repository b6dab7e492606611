"""Dr. GRPO (also MSRL's advantage): ``A_i = r_i - mean_g`` with no std scaling, no KL, and a
length-independent loss normaliser (sum of token losses / (B * max_new_tokens))."""

from __future__ import annotations

from rmkit.algorithms.base import Settings, register
from rmkit.algorithms.methods.grpo import GRPO


@register
class DrGRPO(GRPO):
    name = "dr_grpo"
    summary = "group advantages r - mean (no std), no KL, constant length normaliser"
    defaults = Settings(kl_mode="none", kl_coef=0.0, aggregation="constant")
    scale_std = False
