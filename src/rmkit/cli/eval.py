"""``rmkit eval``: score a judge on a reward benchmark; ``rescore`` and ``compare`` saved runs.

``eval`` is a command group whose callback is the main command (it runs when no subcommand is
given), so these all work::

    rmkit eval --benchmark vl-rewardbench --data DIR --model NAME --output OUT
    rmkit eval rescore OUT
    rmkit eval compare OUT_A OUT_B

Options become ``key.path=value`` overrides on top of an optional ``--recipe`` (``kind: eval``);
``--set key.path=value`` overrides win over both. Values are passed as JSON so names such as
"yes" or "1.0" stay strings.
"""

from __future__ import annotations

from pathlib import Path

import typer

from rmkit.cli import common

eval_app = typer.Typer(
    help="Score a judge on a reward benchmark (official protocols, position control, reports).",
    invoke_without_command=True,
    add_completion=False,
    rich_markup_mode="rich",
)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


# Option name -> dotted config key.
_KEYS = {
    **{k: k for k in ("benchmark", "data", "split", "subset", "image_root", "limit")},
    **{k: k for k in ("output", "seed", "template", "votes", "orders")},
    **common.section_keys("judge", common.LOCAL_FIELDS + common.API_FIELDS),
    **common.section_keys("sampling", common.SAMPLING_FIELDS),
}


@eval_app.callback()
def eval_cmd(
    ctx: typer.Context,
    benchmark: str = typer.Option(
        None,
        "--benchmark",
        "-b",
        help="vl-rewardbench, multimodal-rewardbench, genai-bench, rewardbench, rewardbench2, mm-rlhf, imagereward, records.",
    ),
    data: str = typer.Option(
        None,
        "--data",
        "-d",
        help="The benchmark's local folder or file (hub download or official JSON/JSONL).",
    ),
    model: str = common.option(
        "model", "Local judge: a folder, a built-in name (e.g. smollm2-135m) or a hub id."
    ),
    adapter: str = common.option("adapter"),
    base_url: str = common.option(
        "base_url", "API judge: an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1."
    ),
    api_model: str = common.option("api_model"),
    api_key_env: str = common.option("api_key_env"),
    concurrency: int = common.option("concurrency"),
    batch_size: int = common.option(
        "batch_size", "Local conversations per generate call (default 8)."
    ),
    dtype: str = common.option("dtype"),
    output: str = common.option(
        "output", "Output folder (predictions.jsonl, metrics.json, report.md, chart)."
    ),
    seed: int = common.option(
        "seed", "Seed of the per-item order and vote tie-breaks (default 0)."
    ),
    limit: int = common.option("limit", "Judge only the first N items."),
    split: str = common.option("split", "Split to read (benchmark default when omitted)."),
    subset: str = typer.Option(
        None,
        "--subset",
        help="Config/subset, e.g. image_generation or image_edition for genai-bench.",
    ),
    image_root: str = common.option("image_root", "Folder relative image paths start from."),
    template: str = common.option(
        "template",
        "Judge template name or file (default: 'default', which asks for <answer>K</answer>).",
    ),
    temperature: float = common.option(
        "temperature", "Sampling temperature (benchmark protocol default)."
    ),
    top_p: float = common.option("top_p", "Nucleus sampling top-p (benchmark protocol default)."),
    top_k: int = common.option("top_k"),
    repetition_penalty: float = common.option("repetition_penalty"),
    max_new_tokens: int = common.option("max_new_tokens", "Longest judge output (default 1024)."),
    votes: int = typer.Option(
        None, "--votes", help="Voting@k: verdicts sampled per item and order (benchmark default)."
    ),
    orders: str = typer.Option(
        None,
        "--orders",
        help="random (default, seeded per item), both (each order and its reverse), native.",
    ),
    recipe: Path = common.recipe_option("eval"),
    sets: list[str] = common.set_option("judge.timeout=300"),
    dry_run: bool = common.dry_run_option(),
) -> None:
    """Evaluate a judge: rmkit eval --benchmark NAME --data PATH (--model M | --base-url U --api-model N) --output DIR."""
    if ctx.invoked_subcommand is not None:
        return
    given = {k: v for k, v in locals().items() if k in _KEYS and v is not None}
    if not given and recipe is None and not sets:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    cfg = _build_config(given, recipe, sets or [])
    if dry_run:
        common.print_config(cfg)
        return
    from rmkit.eval.runner import run_eval

    metrics = run_eval(cfg)
    _print_metrics(metrics, Path(cfg.output))


def _build_config(given: dict, recipe: Path | None, sets: list[str]):
    """Options as JSON-valued overrides on the recipe; ``--set`` overrides last."""
    from rmkit.config.kinds import load_config

    overrides = common.option_overrides(
        given,
        _KEYS,
        sets,
        paths=("data", "output", "image_root", "adapter"),
        maybe_paths=("model", "template"),
    )
    return load_config(recipe, overrides, kind="eval")


@eval_app.command("rescore")
def rescore_cmd(
    out: Path = typer.Argument(..., help="The output folder of an earlier `rmkit eval`."),
) -> None:
    """Recompute metrics.json, report.md and the chart from DIR/predictions.jsonl (no generation)."""
    from rmkit.eval.outputs import finalize

    _print_metrics(finalize(out), out)


@eval_app.command("compare")
def compare_cmd(
    dir_a: Path = typer.Argument(..., help="Output folder of run A."),
    dir_b: Path = typer.Argument(..., help="Output folder of run B."),
    n_boot: int = typer.Option(2000, "--n-boot", help="Bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
) -> None:
    """Side-by-side table of two runs with deltas and a paired bootstrap 95% CI."""
    from rmkit.eval.compare import ci_line, compare_runs, comparison_table

    result = compare_runs(dir_a, dir_b, n_boot=n_boot, seed=seed)
    con = common.out_console()
    con.print(comparison_table(result))
    con.print(ci_line(result))


def _print_metrics(metrics: dict, out: Path) -> None:
    from rmkit.eval.report import metrics_table, stats_line

    con = common.out_console()
    con.print(metrics_table(metrics))
    con.print(stats_line(metrics))
    con.print(
        f"results in {out}/ (metrics.json, report.md, predictions.jsonl, {metrics['benchmark']}.png)",
        soft_wrap=True,
    )
