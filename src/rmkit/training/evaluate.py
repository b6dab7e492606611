"""Held-out judge accuracy during training (``eval.every_steps``).

Every N steps (and after the last one) the policy judges up to ``eval.max_records`` held-out
preference records greedily, each in every candidate order (so a judge that always answers
"1" scores 50% on pairs), and ``eval/accuracy`` (verdict picks the labelled candidate as shown)
and ``eval/format_ok`` are logged with the step's metrics. The main process evaluates; the
others wait.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def setup_eval(run) -> None:
    """Load the held-out records and what judging them needs (no-op when evaluation is off)."""
    cfg = run.cfg
    ev = cfg.eval
    if not ev.every_steps:
        return
    from rmkit.training.sharding import mode

    if mode(run.accel) == "deepspeed-zero3":
        from rmkit.errors import RmkitError

        raise RmkitError(
            "eval.every_steps: in-training evaluation generates on the main process alone, "
            "which DeepSpeed ZeRO-3's partitioned weights do not allow",
            hint="remove eval.every_steps and evaluate the final output with rmkit eval, or use "
            "ZeRO-2 / FSDP",
        )
    from rmkit.prompts import get_template
    from rmkit.training.data import load_training_records

    # image references confined as for the training records (SECURITY-REVIEW M5)
    loaded, f = load_training_records(ev.path or cfg.data.path, ev.split, "rl", cfg.data.image_root)
    records = [r for r in loaded if r.get("label") is not None][: ev.max_records]
    run.extras["eval_records"] = records
    run.extras["eval_root"] = Path(cfg.data.image_root) if cfg.data.image_root else f.parent
    run.extras.setdefault("template", get_template(cfg.data.template))
    if "backend" not in run.extras:
        from rmkit.generation.hf import HFBackend

        run.extras["eval_backend"] = HFBackend(run.loaded, batch_size=16)
    log.info("evaluating every %d steps on %d records from %s", ev.every_steps, len(records), f)


def judge_accuracy(run, records: list[dict]) -> dict[str, float]:
    """Greedy verdicts of the current policy on ``records`` in every candidate order."""
    from rmkit.generation.base import SamplingParams
    from rmkit.prompts import parse_verdict, render_judge_messages
    from rmkit.rewards import shown_label

    shows, convs = [], []
    for rec in records:
        for order in itertools.permutations(range(len(rec["candidates"]))):
            shows.append((rec, list(order)))
            convs.append(render_judge_messages(rec, list(order), run.template, run.eval_root))
    max_new = run.cfg.rl.max_new_tokens if run.cfg.rl else run.cfg.eval.max_new_tokens
    backend = run.extras.get("backend") or run.extras["eval_backend"]
    model = run.unwrapped
    was_training = model.training
    model.eval()
    try:
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new)
        outs = backend.generate(convs, params)
    finally:
        model.train(was_training)
    correct = formatted = 0
    for (rec, order), row in zip(shows, outs, strict=True):
        verdict = parse_verdict(row[0].text, run.template, len(order))
        correct += verdict.choice is not None and verdict.choice == shown_label(rec, order)
        formatted += verdict.format_ok
    n = max(1, len(shows))
    return {"eval/accuracy": correct / n, "eval/format_ok": formatted / n}


def maybe_evaluate(run, metrics: dict[str, Any]) -> None:
    """Add ``eval/*`` to ``metrics`` on evaluation steps (main process generates)."""
    records = run.extras.get("eval_records")
    every = run.cfg.eval.every_steps
    if not records or not (run.step % every == 0 or run.step == run.total_steps):
        return
    if run.accel.is_main_process:
        metrics.update(judge_accuracy(run, records))
    run.accel.wait_for_everyone()
