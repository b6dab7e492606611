"""``rmkit eval``: load a benchmark, judge every sample once, write predictions and metrics.

Flow: resolve the output folder (a rerun with the same config resumes; a different config is
refused) -> load the benchmark into items -> plan every sample's shown order -> skip samples
already in ``predictions.jsonl`` -> judge the rest in chunks through a generation backend,
appending one flushed line per sample -> :func:`rmkit.eval.outputs.finalize` computes
``metrics.json`` from the saved predictions, exactly as ``rmkit eval rescore`` does.

Samples of one item that show the same order (likely with two candidates and several votes)
are sent as one conversation with ``n`` completions, so each gets its own sample index (its own
seed and cache entry) instead of being deduplicated into one answer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmkit.data.staging import check_output_vs_inputs
from rmkit.errors import RmkitError
from rmkit.eval.config import EvalConfig
from rmkit.eval.items import EvalItem
from rmkit.eval.outputs import CONFIG_FILE, DATASET_FILE, check_resumable, finalize
from rmkit.eval.position import Pick, plan_order, split_sample
from rmkit.eval.predictions import PREDICTIONS, PredictionWriter, done_keys, read_predictions
from rmkit.eval.tables import LoadContext
from rmkit.utils.io import clean_stale_tmp, write_json_atomic
from rmkit.utils.lock import lock_output
from rmkit.utils.redact import redact_secrets

log = logging.getLogger(__name__)

CACHE_DIR = "cache"


@dataclass
class Request:
    """One conversation sent to the judge: an item shown in one order, ``n`` samples wanted
    (``samples`` are their sample indices; only those in ``pending`` are still missing)."""

    item: EvalItem
    order: list[int]
    samples: list[int]
    pending: list[int]


def load_items(cfg: EvalConfig, out: Path) -> tuple[list[EvalItem], dict[str, Any]]:
    """Load the benchmark (images into ``out/cache/images``); apply ``limit``; check ids."""
    from rmkit.eval.benchmarks import BENCHMARKS

    ctx = LoadContext(
        data=Path(cfg.data).expanduser(),
        cache_dir=out / CACHE_DIR / "images",
        split=cfg.split,
        subset=cfg.subset,
        image_root=Path(cfg.image_root).expanduser() if cfg.image_root else None,
        exclude=out,
    )
    res = BENCHMARKS[cfg.benchmark].load(ctx)
    items = res.items[: cfg.limit] if cfg.limit else res.items
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise RmkitError(
                f"{cfg.data}: item id '{it.id}' appears twice",
                hint="every benchmark row needs a unique id",
            )
        seen.add(it.id)
    if not items:
        raise RmkitError(
            f"{cfg.data}: no items to judge", hint="check --split/--subset and the data folder"
        )
    summary = {
        "n_rows": res.n_rows,
        "n_items": len(items),
        "n_items_before_limit": len(res.items),
        "skipped": res.skipped,
        "files": res.files,
        "ids": [it.id for it in items],
    }
    return items, summary


def plan_requests(
    items: list[EvalItem], cfg: EvalConfig, done: set[tuple[str, int]]
) -> list[Request]:
    """Group each item's samples by shown order; keep the groups with a missing sample."""
    requests = []
    for it in items:
        groups: dict[tuple[int, ...], list[int]] = {}
        for s in range(cfg.samples_per_item):
            vote, slot = split_sample(s, cfg.n_slots)
            order = plan_order(cfg.seed, it.id, vote, slot, len(it.candidates), cfg.orders)
            groups.setdefault(tuple(order), []).append(s)
        for order, samples in groups.items():
            pending = [s for s in samples if (it.id, s) not in done]
            if pending:
                requests.append(Request(it, list(order), samples, pending))
    return requests


def to_pick(verdict: Any, order: list[int]) -> tuple[int | None, Pick]:
    """``(shown choice, pick)`` of a parsed verdict: the pick is the candidate index behind the
    shown position, or the tie outcome; ``(None, None)`` when nothing usable was parsed."""
    if (
        verdict.outcome == "preferred"
        and verdict.choice is not None
        and 0 <= verdict.choice < len(order)
    ):
        return verdict.choice, order[verdict.choice]
    if verdict.outcome in ("tie", "both_bad"):
        return None, verdict.outcome
    return None, None


def prediction_line(
    item: EvalItem,
    sample: int,
    n_slots: int,
    order: list[int],
    messages: list[dict],
    completion: Any,
    verdict: Any,
) -> dict[str, Any]:
    """One ``predictions.jsonl`` line (see docs/eval.md for the fields)."""
    shown, pick = to_pick(verdict, order)
    vote, slot = split_sample(sample, n_slots)
    head = item.header()
    right = pick is not None and (
        pick in item.correct if isinstance(pick, int) else pick == item.gold
    )
    line = {"id": head.pop("id"), "sample": sample, "vote": vote, "slot": slot}
    line.update(head)
    line.update(
        {
            "order": order,
            "prompt": messages,
            "output": completion.text,
            "finish_reason": completion.finish_reason,
            "n_tokens": completion.n_tokens,
            "verdict": {
                "choice": verdict.choice,
                "outcome": verdict.outcome,
                "answer": verdict.answer,
                "format_ok": verdict.format_ok,
                "reason": verdict.reason,
            },
            "shown_choice": shown,
            "pick": pick,
            "correct": bool(right),
        }
    )
    return line


def build_backend(cfg: EvalConfig, out: Path) -> Any:
    """The judge backend the config names (local HF model or OpenAI-compatible API, whose
    answers are cached in the output folder)."""
    return cfg.judge.build(cache_dir=str(out / CACHE_DIR / "api"), server_log=out / "server.log")


def _check_template(cfg: EvalConfig, items: list[EvalItem]) -> Any:
    from rmkit.prompts import get_template

    tpl = get_template(cfg.template)
    if tpl.is_pointwise:
        raise RmkitError(
            f"template '{tpl.name}' scores one candidate at a time; rmkit eval compares candidates",
            hint="use a pairwise template such as 'default'",
        )
    for n in sorted({len(it.candidates) for it in items}):
        tpl.check_count(n)
    return tpl


def _judge_batch(
    batch: list[Request], n: int, backend: Any, cfg: EvalConfig, tpl: Any
) -> Iterator[dict[str, Any]]:
    """Judge requests that all want ``n`` samples; yield a prediction line per pending sample."""
    from rmkit.generation import SamplingParams
    from rmkit.prompts import parse_verdict, render_judge_messages

    params = SamplingParams(
        n=n,
        temperature=cfg.sampling.temperature,
        top_p=cfg.sampling.top_p,
        max_new_tokens=cfg.sampling.max_new_tokens,
        seed=cfg.seed,
        top_k=cfg.sampling.top_k,
        repetition_penalty=cfg.sampling.repetition_penalty,
    )
    convs = [render_judge_messages(r.item.to_record(), r.order, tpl) for r in batch]
    outputs = backend.generate(convs, params)
    if len(outputs) != len(convs) or any(len(c) < n for c in outputs):
        raise RmkitError(
            f"the judge backend returned {len(outputs)} result lists for {len(convs)} conversations",
            hint="a backend must return params.n completions per conversation, in order",
        )
    for r, msgs, comps in zip(batch, convs, outputs, strict=True):
        for pos, sample in enumerate(r.samples):
            if sample in r.pending:
                verdict = parse_verdict(comps[pos].text, tpl, len(r.order))
                yield prediction_line(
                    r.item, sample, cfg.n_slots, r.order, msgs, comps[pos], verdict
                )


def _judge_likelihood(
    batch: list[Request], backend: Any, cfg: EvalConfig, tpl: Any
) -> Iterator[dict[str, Any]]:
    """``method: likelihood``: one forced-answer verdict per request (rmkit.eval.likelihood)."""
    from rmkit.eval.likelihood import judge_likelihood

    def make_line(r: Request, sample: int, messages, completion, verdict) -> dict[str, Any]:
        return prediction_line(r.item, sample, cfg.n_slots, r.order, messages, completion, verdict)

    steps = cfg.sampling.max_new_tokens if cfg.reasoning == "greedy" else None
    return judge_likelihood(batch, backend, tpl, make_line, steps)


def judge_requests(
    requests: list[Request], backend: Any, cfg: EvalConfig, tpl: Any, writer: PredictionWriter
) -> None:
    """Send the requests in chunks (a local batch, or a few rounds of API concurrency); write
    one flushed prediction line per pending sample as soon as its chunk returns."""
    from rmkit.utils.console import Progress

    chunk = cfg.judge.concurrency * 4 if cfg.judge.is_api else cfg.judge.batch_size
    total = sum(len(r.pending) for r in requests)
    n_bad = 0
    with Progress("eval", total=total, unit="samples") as bar:
        for start in range(0, len(requests), chunk):
            part = requests[start : start + chunk]
            for n in sorted({len(r.samples) for r in part}):
                group = [r for r in part if len(r.samples) == n]
                if cfg.method == "likelihood":
                    lines = _judge_likelihood(group, backend, cfg, tpl)
                else:
                    lines = _judge_batch(group, n, backend, cfg, tpl)
                for line in lines:
                    n_bad += line["pick"] is None
                    writer.write(line)
                    bar.update(1, unparsable=n_bad)


def run_eval(cfg: EvalConfig, backend: Any = None) -> dict[str, Any]:
    """Run (or resume) an evaluation; return the metrics written to ``metrics.json``.

    ``backend``: any object with the generation ``Backend`` interface; built from
    ``cfg.judge`` when None (and closed at the end).
    """
    out = Path(cfg.output).expanduser()
    # never write into (or around) the data being judged (SECURITY-REVIEW L4)
    check_output_vs_inputs(out, [cfg.data] if cfg.data else [])
    # one run writes a folder at a time (SECURITY-REVIEW M6): a second one stops here
    with lock_output(out, what="eval output"):
        return _run_eval(cfg, out, backend)


def _run_eval(cfg: EvalConfig, out: Path, backend: Any) -> dict[str, Any]:
    clean_stale_tmp(out)
    config = redact_secrets(cfg.model_dump(mode="json"))  # no URL credentials saved
    check_resumable(out, config)
    items, summary = load_items(cfg, out)
    tpl = _check_template(cfg, items)
    write_json_atomic(out / CONFIG_FILE, config)
    write_json_atomic(out / DATASET_FILE, summary)
    done = done_keys(read_predictions(out / PREDICTIONS, repair=True))
    requests = plan_requests(items, cfg, done)
    n_pending = sum(len(r.pending) for r in requests)
    if cfg.votes > 1 and cfg.sampling.temperature == 0:
        log.warning(
            "%d votes with greedy decoding: votes that show the same order repeat one answer",
            cfg.votes,
        )
    log.info(
        "%s: %d items x %d samples; %d already judged, %d to go",
        cfg.benchmark,
        len(items),
        cfg.samples_per_item,
        len(items) * cfg.samples_per_item - n_pending,
        n_pending,
    )
    if requests:
        own = backend is None
        backend = backend if backend is not None else build_backend(cfg, out)
        try:
            with PredictionWriter(out / PREDICTIONS) as writer:
                judge_requests(requests, backend, cfg, tpl, writer)
        finally:
            if own:
                backend.close()
    return finalize(out)
