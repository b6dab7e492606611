"""``rmkit distill``: CoT judge traces from a teacher, rejection sampling, CMKD.

    rmkit distill --input RECORDS.jsonl --base-url URL --api-model NAME --output DIR
                  [--samples N] [--concurrency C] [--template NAME]
    rmkit distill --mode rejection-sampling --input RECORDS.jsonl --model PATH [--adapter DIR] ...
    rmkit distill --mode cmkd --input CAPTION_RECORDS.jsonl --image-records RECORDS.jsonl ...

Options become ``key.path=value`` overrides on top of an optional ``--recipe`` (``kind:
distill``); ``--set key.path=value`` overrides win over both. Rerunning the same command with
the same ``--output`` continues where the last run stopped.
"""

from __future__ import annotations

from pathlib import Path

import typer

from rmkit.cli import common

# Option name -> dotted config key.
_KEYS = {
    **{k: k for k in ("output", "mode", "split", "image_root", "template", "seed", "limit")},
    "input_path": "input",
    **common.section_keys(
        "teacher", common.LOCAL_FIELDS + common.API_FIELDS + ("timeout", "max_retries")
    ),
    **common.section_keys("sampling", ("samples", *common.SAMPLING_FIELDS)),
    "fmt": "filters.format",
    "correct_filter": "filters.correct",
    "keep": "rejection.keep",
    **common.section_keys("cmkd", ("image_records", "image_template")),
    "price_input": "pricing.input_per_1m",
    "price_output": "pricing.output_per_1m",
}
_PATHS = ("input_path", "output", "image_root", "adapter", "image_records")


def register(app: typer.Typer) -> None:
    app.command("distill", no_args_is_help=True)(distill_cmd)


def distill_cmd(
    input_path: str = typer.Option(
        None, "--input", "-i", help="Records JSONL (or a build-data folder)."
    ),
    output: str = common.option("output", "Output folder (resumable)."),
    base_url: str = common.option("base_url", "Teacher API: OpenAI-compatible endpoint."),
    api_model: str = common.option("api_model"),
    model: str = common.option(
        "model", "Local model instead of an API: folder, built-in name or hub id."
    ),
    adapter: str = common.option("adapter"),
    mode: str = typer.Option(
        None, "--mode", help="teacher (default), rejection-sampling, or cmkd."
    ),
    samples: int = typer.Option(
        None, "--samples", "-n", help="Traces sampled per record (default 4)."
    ),
    concurrency: int = common.option("concurrency"),
    template: str = common.option(
        "template", "Judge template name or file (default 'default'; cmkd: 'msrl')."
    ),
    image_records: str = typer.Option(
        None,
        "--image-records",
        help="cmkd: the records with real images the caption records map back to.",
    ),
    image_template: str = typer.Option(
        None, "--image-template", help="cmkd: template of the image prompt (default msrl-caption)."
    ),
    keep: str = typer.Option(
        None, "--keep", help="rejection-sampling: all correct traces (default) or one per record."
    ),
    fmt: str = typer.Option(
        None, "--format", help="Format check: strict (default), lenient, or off."
    ),
    correct_filter: bool = typer.Option(
        None,
        "--correct-filter/--no-correct-filter",
        help="Keep only traces whose verdict matches the label (default on).",
    ),
    temperature: float = common.option("temperature", "Sampling temperature (default 1.0)."),
    top_p: float = common.option("top_p", "Nucleus sampling top-p (default 1.0)."),
    top_k: int = common.option("top_k"),
    repetition_penalty: float = common.option("repetition_penalty"),
    max_new_tokens: int = common.option("max_new_tokens", "Longest trace (default 1024)."),
    seed: int = common.option("seed", "Seed of candidate orders and sampling (default 0)."),
    limit: int = common.option("limit", "Process only the first N records."),
    split: str = common.option(
        "split", "Split file read when --input is a folder (default train)."
    ),
    image_root: str = common.option(
        "image_root", "Folder relative image paths start from (default: the input's folder)."
    ),
    api_key_env: str = common.option("api_key_env"),
    timeout: float = typer.Option(
        None, "--timeout", help="Seconds to wait for one API answer (default 120)."
    ),
    max_retries: int = typer.Option(
        None, "--max-retries", help="Retries per API request (default 8)."
    ),
    dtype: str = common.option("dtype"),
    batch_size: int = common.option(
        "batch_size", "Local sequences per generate batch (default 16)."
    ),
    price_input: float = typer.Option(
        None, "--price-input", help="Cost estimate: price per 1M prompt tokens."
    ),
    price_output: float = typer.Option(
        None, "--price-output", help="Cost estimate: price per 1M completion tokens."
    ),
    recipe: Path = common.recipe_option("distill"),
    sets: list[str] = common.set_option("filters.dedupe=false"),
    restart: bool = typer.Option(
        False,
        "--restart",
        help="Discard the outputs in --output and start over (the request cache is kept).",
    ),
    dry_run: bool = common.dry_run_option(),
) -> None:
    """Distil chain-of-thought judge traces into SFT records (teacher, rejection sampling, CMKD)."""
    given = {k: v for k, v in locals().items() if k in _KEYS and v is not None}
    from rmkit.config.kinds import load_config

    overrides = common.option_overrides(
        given,
        _KEYS,
        sets or [],
        paths=_PATHS,
        maybe_paths=("model", "template", "image_template"),
    )
    cfg = load_config(recipe, overrides, kind="distill")
    if dry_run:
        common.print_config(cfg)
        return
    from rmkit.distill.engine import run_distill

    summary = run_distill(cfg, restart=restart)
    print_summary(summary, cfg.output)


def print_summary(summary: dict, output: str) -> None:
    """The run's counts by reason, calls, tokens and cost as a table on stdout."""
    from rich.table import Table

    t = Table(title=f"rmkit distill ({summary['mode']}) -> {output}")
    t.add_column("")
    t.add_column("count", justify="right")
    t.add_row("records done", f"{summary['records_done']} / {summary['records']}")
    t.add_row("traces requested", str(summary["requested"]))
    t.add_row("[bold]kept", f"[bold]{summary['kept']}")
    t.add_row("rejected", str(summary["rejected"]))
    for reason, n in summary["by_reason"].items():
        t.add_row(f"  {reason}", str(n))
    for reason, n in summary["skipped_records"].items():
        t.add_row(f"records skipped: {reason}", str(n))
    for reason, n in summary["records_without_trace"].items():
        t.add_row(f"records without trace: {reason}", str(n))
    if "rl_records" in summary:
        t.add_row("SFT records / RL records", f"{summary['sft_records']} / {summary['rl_records']}")
    if "cmkd" in summary:
        t.add_row(
            "CMKD targets (pseudo-labelled)",
            f"{summary['cmkd']['targets']} ({summary['cmkd']['pseudo_labelled']})",
        )
    if "sequences" in summary:
        t.add_row("sequences generated (local model)", str(summary["sequences"]))
    else:
        t.add_row(
            "API calls (paid, cache hits)",
            f"{summary['api_calls']} ({summary['paid_calls']}, {summary['cache_hits']})",
        )
    if "consistency_judge" in summary:
        t.add_row("consistency judge calls", str(summary["consistency_judge"]["api_calls"]))
    tok = summary["tokens"]
    t.add_row("tokens (prompt + completion)", f"{tok['prompt']} + {tok['completion']}")
    cost = summary["cost"]
    t.add_row(
        "estimated cost",
        "set --price-input/--price-output"
        if cost is None
        else f"{cost['estimate']:.4f} {cost['currency']}",
    )
    con = common.out_console()
    con.print(t)
    outputs = "traces.jsonl, rejects.jsonl" + (", rl.jsonl" if "rl_records" in summary else "")
    con.print(f"outputs in {output}/ ({outputs}, summary.json)", soft_wrap=True)
    if not summary["complete"]:
        con.print("[yellow]not complete: rerun the same command to finish[/]")
