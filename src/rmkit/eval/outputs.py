"""The files of an eval output folder, and turning saved predictions into metrics.

``DIR/config.json`` (the resolved :class:`~rmkit.eval.config.EvalConfig`),
``DIR/dataset.json`` (what was loaded: row and item counts, skipped rows, the item ids),
``DIR/predictions.jsonl`` (one line per judged sample), and the results written by
:func:`finalize`: ``metrics.json``, ``report.md`` and ``<benchmark>.png``. ``finalize`` reads
only the first three, so ``rmkit eval rescore DIR`` and the end of a run produce the same bytes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rmkit.errors import RmkitError
from rmkit.eval.predictions import PREDICTIONS, dedupe, read_predictions
from rmkit.utils.io import read_json, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"

# Config keys that change what a sample is; a rerun in the same folder must keep them.
RESUME_KEYS = (
    "benchmark",
    "data",
    "split",
    "subset",
    "template",
    "sampling",
    "votes",
    "orders",
    "seed",
)
JUDGE_KEYS = ("model", "adapter", "dtype", "quantization", "base_url", "api_model")
# sampling keys added later, with the value a run that predates them is read with
SAMPLING_BEFORE = {"top_k": 0, "repetition_penalty": 1.0}


def check_resumable(out: Path, config: dict[str, Any]) -> None:
    """Refuse to append to a folder whose predictions came from a different setup."""
    path = out / CONFIG_FILE
    if not path.exists() or not (out / PREDICTIONS).exists():
        return
    old = read_json(path)
    if isinstance(old.get("sampling"), dict):  # folders from before these keys: neutral
        old["sampling"] = {**SAMPLING_BEFORE, **old["sampling"]}
    diffs = [k for k in RESUME_KEYS if old.get(k) != config.get(k)]
    diffs += [
        f"judge.{k}"
        for k in JUDGE_KEYS
        if (old.get("judge") or {}).get(k) != (config.get("judge") or {}).get(k)
    ]
    if diffs:
        key = diffs[0]
        top, _, sub = key.partition(".")
        was = (old.get(top) or {}).get(sub) if sub else old.get(top)
        now = (config.get(top) or {}).get(sub) if sub else config.get(top)
        raise RmkitError(
            f"{out} holds predictions of a different run ({key}: {was!r} there, {now!r} now)",
            hint="use a new --output folder, or delete this one to start over",
        )


def load_run(out: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]]]:
    """``(config, dataset summary or None, predictions)`` of an output folder.

    Predictions are deduplicated, sorted, and restricted to the loaded items and the planned
    sample indices (a folder reused with a smaller ``--limit`` keeps older lines on disk).
    """
    out = Path(out)
    if not (out / CONFIG_FILE).exists():
        raise RmkitError(
            f"{out}: not an rmkit eval output folder (no {CONFIG_FILE})",
            hint="pass the --output folder of a run",
        )
    config = read_json(out / CONFIG_FILE)
    dataset = read_json(out / DATASET_FILE) if (out / DATASET_FILE).exists() else None
    preds = dedupe(read_predictions(out / PREDICTIONS))
    if not preds:
        raise RmkitError(
            f"{out}: no predictions to score", hint="run `rmkit eval` into this folder first"
        )
    per_item = int(config["votes"]) * (2 if config.get("orders") == "both" else 1)
    ids = set(dataset["ids"]) if dataset and "ids" in dataset else None
    kept = [p for p in preds if int(p["sample"]) < per_item and (ids is None or p["id"] in ids)]
    if len(kept) < len(preds):
        log.info(
            "%s: %d prediction line(s) outside this run's items/samples ignored",
            out,
            len(preds) - len(kept),
        )
    return config, dataset, kept


def finalize(out: str | Path) -> dict[str, Any]:
    """Compute and write ``metrics.json``, ``report.md`` and the chart from the saved run."""
    from rmkit.eval.benchmarks import benchmark_metrics
    from rmkit.eval.report import render_markdown, write_chart

    out = Path(out)
    config, dataset, preds = load_run(out)
    metrics, _score = benchmark_metrics(preds, config, dataset)
    if dataset is not None and metrics["n_judged"] < metrics["n_loaded"]:
        log.warning(
            "%s: only %d of %d items have predictions (an unfinished run?)",
            out,
            metrics["n_judged"],
            metrics["n_loaded"],
        )
    write_json_atomic(out / METRICS_FILE, metrics)
    chart = write_chart(metrics, out / f"{metrics['benchmark']}.png")
    write_text_atomic(out / REPORT_FILE, render_markdown(metrics, chart.name if chart else None))
    return metrics
