"""RL and SFT math, and the RL algorithms.

* :mod:`rmkit.algorithms.base`: what an algorithm is (:class:`Algorithm`, :class:`Settings`),
  the registry :data:`ALGORITHMS`, :func:`compute_advantages`. No torch at import.
* :mod:`rmkit.algorithms.methods`: one module per algorithm (GRPO, Dr. GRPO, Reinforce++,
  StableReinforce, ...), each registering itself.
* :mod:`rmkit.algorithms.advantages`, :mod:`rmkit.algorithms.losses`: pure tensor functions.

The tensor functions are loaded on first use (``from rmkit.algorithms import policy_loss``
imports torch then), so the CLI can read the registry to validate recipes without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from rmkit.algorithms.base import (
    AGGREGATIONS,
    ALGORITHMS,
    FILTER_RULES,
    KL_MODES,
    PRECLIP_BOUNDS,
    Algorithm,
    Settings,
    algorithm_names,
    compute_advantages,
    get_algorithm,
    register,
)

_TENSOR_FUNCTIONS = {
    "advantages": (
        "clip_rewards",
        "discounted_returns",
        "group_advantages",
        "kl_token_rewards",
        "masked_whiten",
        "outlier_filter",
        "reinforce_pp_advantages",
        "reinforce_pp_returns",
        "released_outlier_filter",
    ),
    "losses": (
        "aggregate_loss",
        "kl_k1",
        "kl_k3",
        "policy_loss",
        "sampler_token_logprobs",
        "sft_loss",
        "sft_loss_selected",
        "supervised_mask",
        "token_logprobs",
    ),
}
_WHERE = {name: module for module, names in _TENSOR_FUNCTIONS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'rmkit.algorithms' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"rmkit.algorithms.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "AGGREGATIONS",
    "ALGORITHMS",
    "FILTER_RULES",
    "KL_MODES",
    "PRECLIP_BOUNDS",
    "Algorithm",
    "Settings",
    "algorithm_names",
    "compute_advantages",
    "get_algorithm",
    "register",
    *_WHERE,
]
