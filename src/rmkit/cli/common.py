"""Shared bits of the command modules: option declarations, options as config overrides,
printing results and configs.

Only typer is imported at module level, so ``rmkit --help`` stays instant.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer

# Options that several commands declare alike: name -> (flags, shared help or None). A command
# whose text differs (another default, another meaning of the value) passes its own help.
_OPTIONS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "output": (("--output", "-o"), None),
    "model": (("--model", "-m"), None),
    "adapter": (("--adapter",), "PEFT adapter folder applied to --model."),
    "base_url": (("--base-url",), None),
    "api_model": (("--api-model",), "Model name sent to --base-url."),
    "api_key_env": (
        ("--api-key-env",),
        "Environment variable holding the API key (default OPENAI_API_KEY).",
    ),
    "concurrency": (("--concurrency",), "API requests in flight (default 8)."),
    "batch_size": (("--batch-size",), None),
    "dtype": (("--dtype",), "Local weights dtype: float32, bfloat16, float16."),
    "template": (("--template", "-t"), None),
    "temperature": (("--temperature",), None),
    "top_p": (("--top-p",), None),
    "top_k": (("--top-k",), "Top-k sampling (default 0: off)."),
    "repetition_penalty": (
        ("--repetition-penalty",),
        "Repetition penalty (default 1.0: off, whatever the checkpoint's generation_config says).",
    ),
    "max_new_tokens": (("--max-new-tokens",), None),
    "seed": (("--seed",), None),
    "limit": (("--limit",), None),
    "split": (("--split",), None),
    "image_root": (("--image-root",), None),
}

# Fields of a generation backend's config section (rmkit.generation.config.BackendConfig: eval's
# ``judge``, distill's ``teacher``) that commands expose as options of the same name: a local
# model's, then an API's; and of ``sampling``. Kept as names here so ``rmkit --help`` imports no
# pydantic; a unit test checks they are BackendConfig fields.
LOCAL_FIELDS = ("model", "adapter", "dtype", "batch_size")
API_FIELDS = ("base_url", "api_model", "api_key_env", "concurrency")
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")


def option(name: str, help: str | None = None) -> Any:
    """A fresh ``typer.Option`` (default None) for the shared option ``name``: its flags from
    the table above, ``help`` or else the shared help text."""
    flags, shared = _OPTIONS[name]
    return typer.Option(None, *flags, help=help or shared)


def recipe_option(kind: str) -> Any:
    """``--recipe``: a ``kind: KIND`` recipe the command's options override."""
    return typer.Option(
        None, "--recipe", help=f"A `kind: {kind}` recipe; options and --set override it."
    )


def set_option(example: str) -> Any:
    """``--set key.path=value`` (repeatable), e.g. ``--set EXAMPLE``."""
    return typer.Option(
        None, "--set", help=f"key.path=value override, e.g. --set {example} (repeatable)."
    )


def dry_run_option() -> Any:
    return typer.Option(False, "--dry-run", help="Print the resolved config and exit.")


def overrides_argument(example: str) -> Any:
    """The positional ``key.path=value`` overrides that follow a recipe."""
    return typer.Argument(
        None, help=f"key.path=value overrides, e.g. {example}", show_default=False
    )


def section_keys(section: str, fields: Iterable[str]) -> dict[str, str]:
    """Option name -> dotted config key for options named like the fields of ``section``."""
    return {f: f"{section}.{f}" for f in fields}


def option_overrides(
    given: dict[str, Any],
    keys: dict[str, str],
    sets: Iterable[str] = (),
    *,
    paths: Iterable[str] = (),
    maybe_paths: Iterable[str] = (),
) -> list[str]:
    """The options in ``given`` as ``key.path=value`` overrides (``keys``: option name ->
    dotted key), then ``sets`` (the ``--set`` overrides, which win).

    Values are written as JSON so names such as "yes" or "1.0" stay strings. Options in
    ``paths`` are made absolute (CLI paths are relative to the working directory, not the
    recipe); those in ``maybe_paths`` (a model or template may also be a built-in name) only
    when they name something that exists.
    """
    given = dict(given)
    for key in paths:
        if key in given:
            given[key] = str(Path(given[key]).expanduser().absolute())
    for key in maybe_paths:
        if key in given and Path(given[key]).expanduser().exists():
            given[key] = str(Path(given[key]).expanduser().absolute())
    return [f"{keys[k]}={json.dumps(v)}" for k, v in given.items()] + list(sets)


def print_config(cfg: Any) -> None:
    """Print a resolved config as YAML on stdout (for --dry-run)."""
    import yaml

    from rmkit.utils.redact import redact_secrets

    data = redact_secrets(cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else cfg)
    print(yaml.safe_dump(data, sort_keys=False), end="")


def out_console():
    from rich.console import Console

    return Console(highlight=False)
