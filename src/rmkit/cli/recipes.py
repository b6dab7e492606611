"""``rmkit recipes validate``: check recipe files without loading any weights."""

from __future__ import annotations

from pathlib import Path

import typer

recipes_app = typer.Typer(help="Work with recipe files.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(recipes_app, name="recipes")


def _collect(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(
                sorted(
                    x
                    for x in p.rglob("*.y*ml")
                    if x.suffix in (".yaml", ".yml") and "accelerate" not in x.parts
                )
            )
        else:
            out.append(p)
    return out


@recipes_app.command("validate")
def validate_cmd(
    paths: list[Path] = typer.Argument(None, help="Recipe files or folders (default: ./recipes)."),
) -> None:
    """Validate recipes: YAML syntax, kind, every key and value (accelerate configs are skipped)."""
    from rmkit.config.kinds import load_config
    from rmkit.errors import ConfigError, RmkitError

    files = _collect(paths or [Path("recipes")])
    if not files:
        raise RmkitError(
            "no recipe files found", hint="pass recipe paths or run from the repository root"
        )
    bad = 0
    for f in files:
        try:
            cfg = load_config(f)
            print(f"ok    {f}  (kind: {cfg.kind})")
        except RmkitError as e:
            bad += 1
            print(f"FAIL  {f}: {e.message}" + (f" (hint: {e.hint})" if e.hint else ""))
    if bad:
        raise ConfigError(f"{bad} of {len(files)} recipe(s) invalid")
