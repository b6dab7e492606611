"""Pure RL/SFT math: advantages, policy losses, KL estimators, SFT loss, the ALGORITHMS dict.

Imports torch; import this package lazily (from training code), never at CLI start-up.
"""

from rmkit.algorithms.advantages import (
    clip_rewards,
    discounted_returns,
    group_advantages,
    kl_token_rewards,
    masked_whiten,
    outlier_filter,
    reinforce_pp_advantages,
)
from rmkit.algorithms.losses import (
    AGGREGATIONS,
    PRECLIP_BOUNDS,
    aggregate_loss,
    kl_k1,
    kl_k3,
    policy_loss,
    sft_loss,
    sft_loss_selected,
    supervised_mask,
    token_logprobs,
)
from rmkit.algorithms.registry import ALGORITHMS, Algorithm, compute_advantages, get_algorithm

__all__ = [
    "AGGREGATIONS",
    "ALGORITHMS",
    "PRECLIP_BOUNDS",
    "Algorithm",
    "aggregate_loss",
    "clip_rewards",
    "compute_advantages",
    "discounted_returns",
    "get_algorithm",
    "group_advantages",
    "kl_k1",
    "kl_k3",
    "kl_token_rewards",
    "masked_whiten",
    "outlier_filter",
    "policy_loss",
    "reinforce_pp_advantages",
    "sft_loss",
    "sft_loss_selected",
    "supervised_mask",
    "token_logprobs",
]
