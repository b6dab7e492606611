"""Weighted composition of rewards, user reward functions, and the papers' reward recipes.

A recipe lists rewards as ``RewardSpec(name, weight, options)``; :func:`compose` turns the list
into a :class:`ComposedReward` that scores a batch of :class:`RewardSample` and returns the
total per completion plus every component (logged as ``reward/<key>``).

Combiners:

* ``sum`` (default): total = sum of weight * value (a None value adds nothing);
* ``r1`` (R1-Reward): total = 0.5 * format + accuracy * (1 + 0.5 * consistency), plus the
  weighted sum of any other components. The three named components keep weight 1.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from rmkit.config.validate import StrictModel, validate_config
from rmkit.errors import ConfigError, RmkitError
from rmkit.generation.config import BackendConfig
from rmkit.rewards.base import RewardSample, check_value
from rmkit.rewards.builtin import accuracy, format_reward, length_penalty, task_type
from rmkit.rewards.consistency import consistency, judge_settings

# Built-in rewards: name -> (function, batched). Batched ones take the whole list of samples.
REWARDS: dict[str, tuple[Callable[..., Any], bool]] = {
    "accuracy": (accuracy, False),
    "format": (format_reward, False),
    "task_type": (task_type, False),
    "length": (length_penalty, False),
    "consistency": (consistency, True),
}
COMBINERS = ("sum", "r1")
R1_PARTS = ("format", "accuracy", "consistency")
SAMPLE_FIELDS = (
    "prompt", "images", "completion", "label", "metadata", "task", "verdict", "label_kind",
    "n_candidates", "n_tokens", "messages", "sample_id",
)  # fmt: skip
# Consistency-reward options that are not judge config fields but BackendConfig.build() extras.
JUDGE_BUILD_KEYS = ("cache_dir",)


class RewardSpec(StrictModel):
    """One reward in a recipe: a built-in name or ``module:function`` / ``file.py:function``."""

    name: str
    weight: float = 1.0
    options: dict[str, Any] = Field(default_factory=dict)
    key: str | None = None  # the name it is logged under; default: name (or the function name)

    @field_validator("options")
    @classmethod
    def _judge_keys(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """The consistency reward's judge keys are checked with the config, before any model
        loads (whether a judge is given at all is checked when the reward is built)."""
        if info.data.get("name") == "consistency":
            try:
                judge_options(options, need_judge=False)
            except ConfigError as e:
                raise ValueError(e.message + (f" ({e.hint})" if e.hint else "")) from None
        return options


def judge_options(
    options: dict[str, Any], need_judge: bool = True
) -> tuple[BackendConfig | None, dict[str, Any], dict[str, Any]]:
    """Split the consistency reward's ``options`` into ``(judge, build extras, own options)``.

    The judge's keys are :class:`~rmkit.generation.config.BackendConfig`'s (a local ``model`` or
    ``base_url`` + ``api_model``) plus ``cache_dir``; the judge is None when ``options.backend``
    holds a ready backend. Raises :class:`ConfigError` for a key that is neither (naming it and
    the closest valid one), an invalid judge key, or (``need_judge``) no judge at all.
    """
    own_keys = set(inspect.signature(consistency).parameters) - {"samples"}
    judge_keys = set(BackendConfig.model_fields)
    valid = sorted(own_keys | judge_keys | set(JUDGE_BUILD_KEYS))
    unknown = sorted(set(options) - set(valid))
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=1, cutoff=0.5)
        raise ConfigError(
            f"reward 'consistency': unknown option(s) {unknown}"
            + (f"; did you mean '{close[0]}'?" if close else ""),
            hint=None if close else "options: " + ", ".join(valid),
        )
    own = {k: v for k, v in options.items() if k in own_keys}
    judge_settings(**{k: v for k, v in own.items() if k != "backend"})  # protocol, variant, ...
    judge = {k: v for k, v in options.items() if k in judge_keys}
    extra = {k: v for k, v in options.items() if k in JUDGE_BUILD_KEYS}
    if own.get("backend") is not None:
        if judge or extra:
            raise ConfigError(
                f"reward 'consistency': options.backend is a ready judge, so the judge option(s) "
                f"{sorted(judge) + sorted(extra)} do not apply",
                hint="give either options.backend or the judge's keys",
            )
        return None, {}, own
    cfg = validate_config(BackendConfig, judge, source="reward 'consistency'", at="options")
    if need_judge and not cfg.configured:
        raise ConfigError(
            "the consistency reward needs a judge: options.model (a local model) or "
            "options.base_url and options.api_model (an OpenAI-compatible server)"
        )
    return cfg, extra, own


@dataclass
class RewardBatch:
    """Scores of one batch: ``total[i]`` and ``components[key][i]`` for completion i."""

    total: list[float]
    components: dict[str, list[float | None]]

    def metrics(self) -> dict[str, float]:
        """Batch means: ``reward/total`` and ``reward/<key>`` (over the samples it applied to)."""
        out = {"reward/total": sum(self.total) / len(self.total)} if self.total else {}
        for key, values in self.components.items():
            vals = [v for v in values if v is not None]
            if vals:
                out[f"reward/{key}"] = sum(vals) / len(vals)
        return out


def load_function(ref: str, base_dir: str | os.PathLike | None = None) -> Callable[..., Any]:
    """Import ``module.path:function`` or ``path/to/file.py:function`` (relative to base_dir)."""
    where, sep, fn_name = ref.rpartition(":")
    if not sep or not where or not fn_name:
        raise ConfigError(
            f"reward '{ref}' is not a built-in reward and not 'module:function' or 'file.py:function'",
            hint="built-in rewards: " + ", ".join(REWARDS),
        )
    if where.endswith(".py") or "/" in where or os.sep in where:
        path = Path(where).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if not path.is_file():
            raise ConfigError(f"reward file not found: {path}", hint=f"check the path in '{ref}'")
        mod_name = (
            "rmkit_user_reward_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        )
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(mod_name, None)
            raise RmkitError(f"importing reward file {path} failed: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ConfigError(
                f"cannot import module '{where}' for reward '{ref}': {e}",
                hint="make the module importable (installed, or on PYTHONPATH) or give a file path",
            ) from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(
            f"'{where}' has no function '{fn_name}'",
            hint="functions there: " + (", ".join(names[:10]) or "none"),
        )
    return fn


def _user_reward(fn: Callable[..., Any], ref: str, options: dict[str, Any]) -> Callable[..., Any]:
    """Adapt a user function taking keyword args (prompt, completion, label, ...) to a sample."""
    params = inspect.signature(fn).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    known = set(SAMPLE_FIELDS) | set(options)
    missing = [
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and n not in known
    ]
    if missing:
        raise ConfigError(
            f"reward '{ref}' requires argument(s) {missing} that rmkit does not provide",
            hint="rmkit passes: " + ", ".join(SAMPLE_FIELDS) + " and the spec's options",
        )

    def call(sample: RewardSample, **opts: Any) -> Any:
        kwargs = {name: getattr(sample, name) for name in SAMPLE_FIELDS} | opts
        if not takes_all:
            kwargs = {k: v for k, v in kwargs.items() if k in params}
        return fn(**kwargs)

    return call


@dataclass
class _Component:
    key: str
    weight: float
    fn: Callable[..., Any]
    batched: bool
    options: dict[str, Any]


def _build_component(spec: RewardSpec, base_dir, owned: list) -> _Component:
    options = dict(spec.options)
    if spec.name in REWARDS:
        fn, batched = REWARDS[spec.name]
        key = spec.key or spec.name
        if spec.name == "consistency":
            judge, extra, options = judge_options(options)
            if options.get("protocol") == "released":
                # a request that still fails after the backend's retries is one failed attempt
                # (asked again, then scored 0) rather than an error that stops the run
                extra = {"on_error": "skip", **extra}
            if judge is not None:
                options["backend"] = judge.build(**extra)
                owned.append(options["backend"])
        accepted = set(inspect.signature(fn).parameters) - {"sample", "samples"}
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ConfigError(
                f"reward '{spec.name}': unknown option(s) {unknown}",
                hint="options: " + ", ".join(sorted(accepted)),
            )
        return _Component(key, spec.weight, fn, batched, options)
    fn = load_function(spec.name, base_dir)
    key = spec.key or getattr(fn, "__name__", spec.name)
    return _Component(key, spec.weight, _user_reward(fn, spec.name, options), False, options)


class ComposedReward:
    """Scores batches of samples with a list of rewards and a combiner (see module docstring)."""

    def __init__(self, components: list[_Component], combiner: str, owned: list):
        self.components = components
        self.combiner = combiner
        self._owned = owned

    @property
    def keys(self) -> list[str]:
        return [c.key for c in self.components]

    def _run(self, comp: _Component, samples: list[RewardSample]) -> list[float | None]:
        if comp.batched:
            try:
                values = comp.fn(samples, **comp.options)
            except RmkitError:
                raise
            except Exception as e:
                ids = ", ".join(s.sample_id for s in samples[:3]) + (
                    ", ..." if len(samples) > 3 else ""
                )
                raise RmkitError(
                    f"reward '{comp.key}' failed on a batch of {len(samples)} samples ({ids}): "
                    f"{type(e).__name__}: {e}"
                ) from e
            if len(values) != len(samples):
                raise RmkitError(
                    f"reward '{comp.key}' returned {len(values)} values for {len(samples)} samples"
                )
            return [
                check_value(v, comp.key, s.sample_id) for v, s in zip(values, samples, strict=True)
            ]
        out = []
        for s in samples:
            try:
                value = comp.fn(s, **comp.options)
            except Exception as e:
                raise RmkitError(
                    f"reward '{comp.key}' failed on sample {s.sample_id or '<no id>'}: "
                    f"{type(e).__name__}: {getattr(e, 'message', e)}",
                    hint=getattr(e, "hint", None),
                ) from e
            out.append(check_value(value, comp.key, s.sample_id))
        return out

    def __call__(self, samples: list[RewardSample]) -> RewardBatch:
        components = {c.key: self._run(c, samples) for c in self.components}
        weights = {c.key: c.weight for c in self.components}
        total = []
        for i in range(len(samples)):
            vals = {k: (v[i] if v[i] is not None else 0.0) for k, v in components.items()}
            rest = [k for k in vals if self.combiner == "sum" or k not in R1_PARTS]
            value = sum(weights[k] * vals[k] for k in rest)
            if self.combiner == "r1":
                value += 0.5 * vals["format"] + vals["accuracy"] * (1.0 + 0.5 * vals["consistency"])
            total.append(value)
        return RewardBatch(total=total, components=components)

    def close(self) -> None:
        """Close the judge backends this composition created."""
        for backend in self._owned:
            backend.close()
        self._owned.clear()


def compose(
    specs: list[RewardSpec | dict[str, Any]],
    combiner: str = "sum",
    base_dir: str | os.PathLike | None = None,
) -> ComposedReward:
    """Build a :class:`ComposedReward`; ``base_dir`` anchors relative reward file paths."""
    if combiner not in COMBINERS:
        raise ConfigError(
            f"unknown reward combiner {combiner!r}", hint="one of: " + ", ".join(COMBINERS)
        )
    parsed = [
        s if isinstance(s, RewardSpec) else validate_config(RewardSpec, s, source=f"rewards[{i}]")
        for i, s in enumerate(specs)
    ]
    if not parsed:
        raise ConfigError(
            "no rewards given", hint="list at least one reward, e.g. {name: accuracy}"
        )
    owned: list = []
    try:
        components = [_build_component(s, base_dir, owned) for s in parsed]
    except BaseException:
        for backend in owned:
            backend.close()
        raise
    keys = [c.key for c in components]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ConfigError(
            f"two rewards are logged as {dupes}", hint="give one of them a distinct 'key'"
        )
    if combiner == "r1":
        missing = [k for k in R1_PARTS if k not in keys]
        bent = [c.key for c in components if c.key in R1_PARTS and c.weight != 1.0]
        if missing or bent:
            raise ConfigError(
                f"the r1 combiner needs rewards keyed {list(R1_PARTS)} with weight 1 "
                f"(missing {missing}, reweighted {bent})",
                hint="0.5*format + accuracy*(1 + 0.5*consistency) fixes these coefficients",
            )
    return ComposedReward(components, combiner, owned)


def preset(name: str) -> tuple[list[RewardSpec], str]:
    """The reward list and combiner of a paper's recipe: ``(specs, combiner)``."""
    S = RewardSpec
    presets = {
        # MSRL stage 1: accuracy 1.0 + format 0.2 (think and answer present).
        "msrl-text": (
            [S(name="accuracy"), S(name="format", weight=0.2, options=_lenient_ta())],
            "sum",
        ),
        # MSRL stages 2-3 add the task-type reward with weight 0.2 as the paper intends. The
        # released code multiplies it by 0.2 a second time (effective 0.04); rmkit does not.
        "msrl": (
            [
                S(name="accuracy"),
                S(name="format", weight=0.2, options=_lenient_ta()),
                S(name="task_type", weight=0.2),
            ],
            "sum",
        ),
        # R1-Reward: 0.5*format(strict) + accuracy*(1 + 0.5*consistency); judge set by the user.
        "r1-reward": (
            [
                S(name="format", options={"mode": "strict"}),
                S(name="accuracy"),
                S(name="consistency"),
            ],
            "r1",
        ),
        # UnifiedReward-Think GRPO: accuracy + format, 1:1.
        "unified-think": (
            [S(name="accuracy"), S(name="format", options={"mode": "lenient"})],
            "sum",
        ),
    }
    if name not in presets:
        raise ConfigError(f"unknown reward preset {name!r}", hint="presets: " + ", ".join(presets))
    return presets[name]


def _lenient_ta() -> dict[str, Any]:
    return {"mode": "lenient", "blocks": ["think", "answer"]}
