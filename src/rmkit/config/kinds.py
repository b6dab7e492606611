"""Recipe kinds: the ``kind:`` key of a recipe names its config model (an explicit table).

Models are referenced by import path so that importing this module stays cheap.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from rmkit.config.loader import apply_overrides, load_recipe
from rmkit.config.validate import validate_config
from rmkit.errors import ConfigError

KINDS: dict[str, str] = {
    "build-data": "rmkit.data.config:BuildDataConfig",
    "train": "rmkit.training.config:TrainConfig",
    "eval": "rmkit.eval.config:EvalConfig",
    "distill": "rmkit.distill.config:DistillConfig",
    "pipeline": "rmkit.pipeline.config:PipelineConfig",
}


def model_for_kind(kind: str) -> type:
    if kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(str(kind), list(KINDS), n=1)
        raise ConfigError(
            f"unknown recipe kind '{kind}'" + (f"; did you mean '{close[0]}'?" if close else ""),
            hint="valid kinds: " + ", ".join(available_kinds()),
        )
    module, _, attr = KINDS[kind].partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"recipe kind '{kind}' is not available in this rmkit build ({e.name} missing)"
        ) from None


def available_kinds() -> list[str]:
    out = []
    for kind, target in KINDS.items():
        module = target.partition(":")[0]
        if importlib.util.find_spec(module.rpartition(".")[0]) is not None:
            try:
                if importlib.util.find_spec(module) is not None:
                    out.append(kind)
            except ModuleNotFoundError:
                pass
    return out


def load_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    *,
    kind: str | None = None,
    base: dict[str, Any] | None = None,
) -> Any:
    """Recipe file (optional) + base values + overrides -> validated config of the right kind.

    Relative paths in a recipe are resolved against the recipe's folder by the config models
    (``resolve_paths``) where they define it.
    """
    data: dict[str, Any] = dict(base or {})
    source = "command line"
    if path is not None:
        data = {**load_recipe(path), **{k: v for k, v in data.items() if v is not None}}
        source = str(path)
    data = apply_overrides(data, overrides or [])
    recipe_kind = data.get("kind", kind)
    if recipe_kind is None:
        raise ConfigError(
            f"{source}: missing 'kind'",
            hint="add e.g. `kind: train` (one of " + ", ".join(KINDS) + ")",
        )
    if kind is not None and recipe_kind != kind:
        raise ConfigError(
            f"{source}: this is a '{recipe_kind}' recipe, not '{kind}'",
            hint=f"run it with `rmkit {recipe_kind}`"
            if recipe_kind != "pipeline"
            else "run it with `rmkit run`",
        )
    data["kind"] = recipe_kind
    model = model_for_kind(recipe_kind)
    if path is not None and hasattr(model, "resolve_paths"):
        data = model.resolve_paths(data, Path(path).resolve().parent)
    return validate_config(model, data, source)
