"""``rmkit run``: run a multi-stage pipeline recipe (``kind: pipeline``)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from rmkit.cli.common import out_console, overrides_argument


def register(app: typer.Typer) -> None:
    app.command("run", no_args_is_help=True)(run_cmd)


def run_cmd(
    recipe: Path = typer.Argument(
        ..., help="A `kind: pipeline` recipe, e.g. recipes/tiny/msrl.yaml."
    ),
    overrides: list[str] = overrides_argument("stages.sft.optim.lr=1e-5 vars.base_model=DIR"),
    output: Path = typer.Option(
        None, "--output", "-o", help="Run folder (stages go to DIR/<stage>/, plus summary.json)."
    ),
    start: str = typer.Option(
        None,
        "--from",
        help="Re-run this stage from scratch and continue; earlier ones must be done.",
    ),
    stop: str = typer.Option(None, "--until", help="Stop after this stage."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan (stages, inputs, outputs, status) and exit."
    ),
) -> None:
    """Run a pipeline's stages in order; finished stages are skipped, an interrupted one resumes."""
    from rmkit.config.kinds import load_config
    from rmkit.errors import ConfigError

    base = {"output": str(output)} if output else None
    try:
        cfg = load_config(recipe, overrides or [], kind="pipeline", base=base)
    except ConfigError as e:
        raise ConfigError(
            f"{recipe}: {e.message}" if str(recipe) not in e.message else e.message, e.hint
        ) from None
    if not cfg.output:
        raise ConfigError("no run folder", hint="pass --output DIR (or set output: in the recipe)")
    run_dir = Path(cfg.output).expanduser().absolute()
    from rmkit.pipeline.runner import make_plan, run_pipeline

    plan = make_plan(cfg, run_dir, start, stop)
    if dry_run:
        print_plan(plan, run_dir)
        return
    summary = run_pipeline(cfg, run_dir, start, stop, recipe=str(recipe))
    print_summary(summary, run_dir)


def _short(path: str, run_dir: Path) -> str:
    """A path as the plan shows it: relative to the run folder or the working folder."""
    p = Path(path)
    if not p.is_absolute():
        return path
    p = Path(os.path.normpath(p))
    for root in (run_dir, Path.cwd()):
        if p.is_relative_to(root):
            return str(p.relative_to(root))
    return str(p)


def print_plan(plan, run_dir: Path) -> None:
    """The plan as a table on stdout, then servers and launch commands."""
    from rich.markup import escape
    from rich.table import Table

    from rmkit.pipeline.stages import launch_command, stage_inputs, stage_settings

    t = Table(title=escape(f"rmkit run -> {run_dir}"))
    for col in ("stage", "kind", "status", "action", "inputs (main)", "output"):
        t.add_column(col, overflow="fold")
    for p in plan:
        s = p.stage
        inputs = "\n".join(_short(x, run_dir) for x in stage_inputs(s)) or "-"
        cells = (s.name, s.kind, p.status, p.action, inputs, _short(str(s.output), run_dir))
        t.add_row(*map(escape, cells))
    con = _console()
    con.print(t)
    for p in plan:
        for name, spec in p.stage.serve.items():
            model = spec.model + (f" + {_short(spec.adapter, run_dir)}" if spec.adapter else "")
            line = f"{p.stage.name}: serves '{name}' ({model}) on 127.0.0.1 while it runs"
            con.print(line, soft_wrap=True, markup=False)
        if p.stage.launch is not None:
            cmd = " ".join(launch_command(p.stage, p.action == "resume"))
            con.print(f"{p.stage.name}: {cmd}", soft_wrap=True, markup=False)
    for p in plan:
        settings = stage_settings(p.stage)
        if settings:
            con.print(
                f"{p.stage.name} settings: " + " ".join(settings), soft_wrap=True, markup=False
            )


def print_summary(summary: dict, run_dir: Path) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(f"rmkit run -> {run_dir}"))
    for col in ("stage", "kind", "status", "this run", "seconds", "key metrics"):
        t.add_column(col, overflow="fold")
    for name, row in summary["stages"].items():
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in (row.get("metrics") or {}).items())
        secs = "-" if row.get("seconds") is None else f"{row['seconds']:.1f}"
        cells = (name, row["kind"], row["status"], row["action"], secs, metrics or "-")
        t.add_row(*map(escape, cells))
    con = _console()
    con.print(t)
    line = headline(summary)
    if line:
        con.print(line, soft_wrap=True, markup=False)
    con.print(f"summary: {run_dir / 'summary.json'}", soft_wrap=True, markup=False)


def _verdict(low: float, high: float) -> str:
    return (
        "a significant gain" if low > 0 else "a significant drop" if high < 0 else "no clear change"
    )


def headline(summary: dict) -> str | None:
    """One line with the result of a run that has a report stage, else None: before -> after,
    or, when the report accounts for the stages, untrained -> SFT -> RL with each stage's gain."""
    keys = ("accuracy_before", "accuracy_after", "ci95_low", "ci95_high", "n_heldout")
    if any(summary.get(k) is None for k in keys):
        return None
    a, b = summary["accuracy_before"], summary["accuracy_after"]
    lo, hi = summary["ci95_low"], summary["ci95_high"]
    clusters = (
        f" in {summary['n_clusters']} clusters" if summary.get("bootstrap") == "cluster" else ""
    )
    n = f"n={summary['n_heldout']}{clusters}"
    if summary.get("accuracy_sft") is not None and summary.get("rl_gain") is not None:
        parts = [f"held-out accuracy {a:.3f}"]
        for name, acc, key in (("SFT", summary["accuracy_sft"], "sft_gain"), ("RL", b, "rl_gain")):
            glo, ghi = summary[f"{key}_ci95_low"], summary[f"{key}_ci95_high"]
            parts.append(
                f"{name} {acc:.3f} ({100 * summary[key]:+.1f} points, 95% CI "
                f"[{100 * glo:+.1f}, {100 * ghi:+.1f}]: {_verdict(glo, ghi)})"
            )
        return " -> ".join(parts) + f", {n}"
    return (
        f"held-out accuracy {a:.3f} -> {b:.3f} ({100 * (b - a):+.1f} points, 95% CI "
        f"[{100 * lo:+.1f}, {100 * hi:+.1f}], {n}): {_verdict(lo, hi)}"
    )


def _console():
    """The stdout console; wide enough for the plan when writing to a file or a pipe."""
    con = out_console()
    if not con.is_terminal:
        con.width = 160
    return con


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)
