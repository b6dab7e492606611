"""What an RL algorithm is in rmkit, and the registry of them.

An algorithm is one class in its own module under :mod:`rmkit.algorithms.methods`, registered
with :func:`register`. The class holds everything that distinguishes it: its advantage estimator
(:meth:`Algorithm.advantages`), its per-token loss terms (:meth:`Algorithm.token_loss`: the PPO
surrogate, the optional log-ratio pre-clip, the KL term where the KL sits in the loss), its
advantage filter, where the KL may go (``kl_modes``) and its default :class:`Settings`. The RL
config (``rl.*``) derives its accepted algorithm names, which knobs apply, and every default from
these classes; the RL loop calls only the two methods.

This module and the algorithm modules import no torch at import time (the CLI reads them to
validate recipes); the tensor math lives in :mod:`rmkit.algorithms.advantages` and
:mod:`rmkit.algorithms.losses` and is imported when a method runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from rmkit.algorithms.constants import AGGREGATIONS, FILTER_RULES, KL_MODES, PRECLIP_BOUNDS
from rmkit.errors import RmkitError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Settings:
    """The resolved knobs of one RL run (``rl.*`` of the config, algorithm defaults filled in).

    * ``kl_mode``/``kl_coef``: where the KL to the reference goes (``k1_reward``: folded into
      the token rewards; ``k3_loss``: a loss term) and its weight;
    * ``aggregation``: how token losses become the step's loss (``token_mean``, ``seq_mean``,
      ``constant``; :func:`rmkit.algorithms.losses.aggregate_loss`);
    * ``clip_low``/``clip_high``: the PPO ratio clip;
    * ``preclip``/``preclip_bounds``: clamp the log-ratio before ``exp``;
    * ``reward_clip``: clamp sequence rewards to [-x, x] (None: off);
    * ``filter_rule``/``filter_sigma``: the advantage outlier filter (None: off);
    * ``max_new_tokens``: the ``constant`` aggregation's length normaliser.
    """

    kl_mode: str = "none"
    kl_coef: float = 0.0
    aggregation: str = "token_mean"
    clip_low: float = 0.2
    clip_high: float = 0.2
    preclip: bool = False
    preclip_bounds: tuple[float, float] = PRECLIP_BOUNDS
    reward_clip: float | None = None
    filter_rule: str | None = None
    filter_sigma: float | None = None
    max_new_tokens: int | None = None

    @classmethod
    def of(cls, obj: Any) -> Settings:
        """The settings read off any object with these attributes (e.g. the resolved
        ``rl`` config section, whose KL lives under ``kl.mode``/``kl.coef``)."""
        values = {
            f.name: getattr(obj, f.name) for f in dataclasses.fields(cls) if hasattr(obj, f.name)
        }
        kl = getattr(obj, "kl", None)
        if kl is not None:
            values.update(kl_mode=kl.mode, kl_coef=kl.coef)
        if "preclip_bounds" in values:
            values["preclip_bounds"] = tuple(values["preclip_bounds"])
        return cls(**values)


class Algorithm:
    """One RL algorithm. Subclass it in a module of :mod:`rmkit.algorithms.methods`, set the
    class attributes, implement :meth:`advantages`, and decorate the class with
    :func:`register`. :meth:`token_loss` has a default (PPO surrogate + optional pre-clip +
    k3 KL term) that most algorithms keep."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line, shown in docs and errors
    needs_groups: ClassVar[bool] = False  # several completions per prompt required
    kl_modes: ClassVar[tuple[str, ...]] = ("none", "k3_loss")  # where the KL may go
    filter_rules: ClassVar[tuple[str, ...]] = ()  # advantage filters it offers (default first)
    defaults: ClassVar[Settings] = Settings()

    def advantages(
        self,
        rewards: torch.Tensor,
        mask: torch.Tensor,
        settings: Settings,
        *,
        group_size: int = 1,
        token_kl: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Token advantages (B, T) from sequence rewards (B,) and the completion mask (B, T),
        zero on padding, with stats (``adv/...``). ``token_kl`` (B, T) is the k1 estimate,
        given when ``settings.kl_mode`` is ``k1_reward``."""
        raise NotImplementedError

    def token_loss(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        settings: Settings,
        ref_logp: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-token loss (B, T) before aggregation, and the surrogate's stats."""
        from rmkit.algorithms.losses import kl_k3, policy_loss

        loss, stats = policy_loss(
            logp, old_logp, advantages, mask, settings.clip_low, settings.clip_high,
            tuple(settings.preclip_bounds) if settings.preclip else None,
        )  # fmt: skip
        if settings.kl_mode == "k3_loss" and ref_logp is not None and settings.kl_coef:
            loss = loss + settings.kl_coef * kl_k3(logp, ref_logp)
        return loss, stats

    # -- checks shared by the config and the math ------------------------------------------

    def check_groups(self, group_size: int) -> None:
        if self.needs_groups and group_size < 2:
            raise RmkitError(
                f"{self.name} compares completions of the same prompt; group_size must be >= 2",
                hint="set batch.completions_per_prompt to 2 or more (the papers use 8)",
            )

    def __repr__(self) -> str:
        return f"<algorithm {self.name}: {self.summary}>"


ALGORITHMS: dict[str, Algorithm] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: add one instance of ``cls`` to :data:`ALGORITHMS` under ``cls.name``."""
    name = cls.__dict__.get("name")
    if not name:
        raise TypeError(f"{cls.__name__} must set the class attribute 'name'")
    if name in ALGORITHMS and type(ALGORITHMS[name]) is not cls:
        raise TypeError(f"two algorithms are named {name!r}")
    bad = [m for m in cls.kl_modes if m not in KL_MODES] + [
        r for r in cls.filter_rules if r not in FILTER_RULES
    ]
    d = cls.defaults
    if bad or d.kl_mode not in cls.kl_modes or d.aggregation not in AGGREGATIONS:
        raise TypeError(f"algorithm {name!r}: defaults or modes out of range ({bad or d})")
    if (d.filter_rule or None) != (cls.filter_rules[0] if cls.filter_rules else None):
        raise TypeError(f"algorithm {name!r}: defaults.filter_rule must be filter_rules[0]")
    ALGORITHMS[name] = cls()
    return cls


def _discover() -> None:
    from rmkit.algorithms import methods

    for info in sorted(pkgutil.iter_modules(methods.__path__), key=lambda m: m.name):
        importlib.import_module(f"{methods.__name__}.{info.name}")


def algorithm_names() -> tuple[str, ...]:
    return tuple(ALGORITHMS)


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise RmkitError(f"unknown RL algorithm {name!r}", hint="one of: " + ", ".join(ALGORITHMS))
    return ALGORITHMS[name]


def compute_advantages(
    algo: Algorithm | str,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    settings: Settings | None = None,
    *,
    group_size: int = 1,
    token_kl: torch.Tensor | None = None,
    **overrides: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``algo.advantages`` with ``settings`` (default: the algorithm's defaults, with
    ``overrides`` applied): token advantages (B, T) and ``adv/mean``/``adv/std`` over the valid
    tokens, plus whatever the algorithm reports (e.g. ``adv/filtered_frac``)."""
    algo = get_algorithm(algo) if isinstance(algo, str) else algo
    s = dataclasses.replace(settings or algo.defaults, **overrides)
    algo.check_groups(group_size)
    adv, stats = algo.advantages(rewards, mask, s, group_size=group_size, token_kl=token_kl)
    valid = adv[mask.bool()]
    stats["adv/mean"] = float(valid.mean()) if valid.numel() else 0.0
    stats["adv/std"] = float(valid.std(correction=0)) if valid.numel() else 0.0
    return adv, stats


_discover()
