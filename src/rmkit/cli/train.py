"""``rmkit train``: run an SFT or RL stage from a ``kind: train`` recipe."""

from __future__ import annotations

from pathlib import Path

import typer

from rmkit.cli.common import dry_run_option, overrides_argument, print_config


def register(app: typer.Typer) -> None:
    app.command("train", no_args_is_help=True)(train_cmd)


def train_cmd(
    recipe: Path = typer.Argument(
        ..., help="A `kind: train` recipe (e.g. recipes/tiny/grpo.yaml)."
    ),
    overrides: list[str] = overrides_argument("optim.lr=1e-5 rl.algorithm=dr_grpo"),
    output: Path = typer.Option(
        None, "--output", "-o", help="Run folder: metrics.jsonl, checkpoints/, final/."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --output from its latest checkpoint."
    ),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many steps."),
    seed: int = typer.Option(
        None, "--seed", help="Seed for data order, rollouts and initialisation."
    ),
    dry_run: bool = dry_run_option(),
) -> None:
    """Train a reward model: SFT on traces, or RL (grpo, dr_grpo, reinforce_pp, stable_reinforce)."""
    from rmkit.config.kinds import load_config
    from rmkit.errors import ConfigError

    options = {
        "output": str(output.resolve()) if output else None,
        "max_steps": max_steps,
        "seed": seed,
    }
    cfg = load_config(
        recipe, overrides, kind="train", base={k: v for k, v in options.items() if v is not None}
    )
    if dry_run:
        print_config(cfg)
        return
    if not cfg.output:
        raise ConfigError("no output folder", hint="pass --output DIR")
    from rmkit.training import train

    summary = train(cfg, resume=resume)
    from rmkit.utils.console import is_main_process

    if is_main_process():
        print(f"trained {summary['steps']} steps; final model: {summary['final']}")
        for key in ("merged", "curves"):
            if summary.get(key):
                print(f"{key}: {summary[key]}")
