"""One record of a distill run, from its completions to its output lines.

:func:`judge_item` parses and filters a record's samples (CMKD: selects the one that becomes the
image record's target) into an :class:`Outcome`; after the batch-level filters (consistency,
``keep: one``) the :class:`~rmkit.distill.engine.Distiller` commits it with the lines and the
done-log entry of :func:`record_lines`. The functions take the run
(:class:`~rmkit.distill.outputs.DistillRun`) for its config, templates and folders, as
:func:`rmkit.distill.cmkd.cmkd_lines` does.

With ``sampling.attempts`` > 1 a record's outcome holds the samples of every attempt it took
(attempt k's sample s has index ``(k - 1) * samples + s``), and every line it produces carries
the attempt label of :func:`attempt_info`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rmkit.distill import select as S
from rmkit.distill.cmkd import build_target, cmkd_lines
from rmkit.distill.inputs import rebase_record, stored_messages
from rmkit.distill.outputs import DistillRun, Item, record_reject_line, reject_line, trace_line
from rmkit.distill.summary import sample_tokens


@dataclass
class Outcome:
    """One record's sampling result on its way to the output files."""

    item: Item
    messages: list[dict]
    samples: list[S.Judged]
    record_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    attempts: int | None = None  # attempts made (sampling.attempts > 1 only)

    def kept_any(self) -> bool:
        return any(s.kept for s in self.samples)

    def then(self, later: Outcome, attempt: int) -> Outcome:
        """This record's earlier attempts followed by attempt ``attempt`` (``later``)."""
        tokens = dict(self.tokens)
        for key, value in later.tokens.items():
            tokens[key] = tokens.get(key, 0) + value
        return Outcome(
            later.item,
            later.messages,
            [*self.samples, *later.samples],
            later.record_reason,
            later.extra,
            tokens,
            attempt,
        )


def attempt_info(o: Outcome, max_attempts: int) -> dict[str, Any]:
    """The difficulty label of a record sampled with ``sampling.attempts`` (else ``{}``):
    ``attempts`` made, ``solved`` (a trace was kept), ``difficulty`` (the attempt that gave the
    kept trace; ``max_attempts + 1`` when none did).

    >>> from rmkit.distill.outputs import Item
    >>> attempt_info(Outcome(Item("a", {}, [0, 1]), [], [], attempts=3), 3)
    {'attempts': 3, 'solved': False, 'difficulty': 4}
    """
    if o.attempts is None:
        return {}
    solved = o.kept_any()
    return {
        "attempts": o.attempts,
        "solved": solved,
        "difficulty": o.attempts if solved else max_attempts + 1,
    }


def judge_item(run: DistillRun, item: Item, conv: list[dict], comps: list[Any]) -> Outcome:
    """The record's samples parsed and filtered (CMKD: the selection of its target)."""
    kind, label = S.record_target(item.record)
    samples = S.judge_completions(
        comps, item.order, run.tpl, strict=run.strict, label_kind=kind, label=label
    )
    if run.cfg.mode == "cmkd":
        outcome = _select_cmkd(run, item, conv, samples)
    else:
        f = run.cfg.filters
        S.apply_filters(
            samples,
            require_correct=f.correct,
            require_format=run.require_format,
            dedupe=f.dedupe,
        )
        outcome = Outcome(item, conv, samples)
    outcome.tokens = sample_tokens(comps)
    return outcome


def _select_cmkd(run: DistillRun, item: Item, conv: list[dict], samples: list[S.Judged]) -> Outcome:
    kind, label = S.record_target(item.record)
    best, reference, reason = S.select_cmkd(samples, kind, label, require_format=run.require_format)
    outcome = Outcome(item, conv, samples, record_reason=reason)
    if best is None:
        return outcome
    target = build_target(
        item, best, run.image_tpl, strict=run.strict, require_format=run.require_format
    )
    if target is None:
        best.fail(S.TARGET_FORMAT)
        outcome.record_reason = S.TARGET_FORMAT
        return outcome
    outcome.extra = {
        "target": target,
        "pseudo_label": label is None and kind == "preferred",
        "reference": reference,
        "confidence": best.mean_logprob is not None,
    }
    return outcome


def record_lines(run: DistillRun, o: Outcome) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """The record's output lines by output file, and its done-log entry."""
    item = o.item
    info = attempt_info(o, run.cfg.sampling.attempts)
    lines: dict[str, list[dict]] = {"traces": [], "rejects": []}
    if run.cfg.mode == "cmkd":
        lines = cmkd_lines(run, o.item, o.samples, o.extra)
    else:
        lines["traces"] = _trace_lines(run, o, info)
        lines["rejects"] = [reject_line(item, s) for s in o.samples if not s.kept]
        if info:
            n = run.cfg.sampling.samples
            for line, s in zip(lines["rejects"], [s for s in o.samples if not s.kept], strict=True):
                line["attempt"] = s.index // n + 1
    if o.record_reason and not o.samples:
        lines["rejects"].append(record_reject_line(item, o.record_reason))
    kept = len(lines["traces"])
    rl = dropped = False
    if run.cfg.mode == "rejection-sampling" and not item.skip and kept == 0:
        # rl: wrong sends only records none of whose samples had the right verdict
        dropped = run.cfg.rejection.rl == "wrong" and any(s.correct for s in o.samples)
        rl = not dropped
    if rl:
        lines["rl"] = [_labelled_record(run, item, info)]
    hard = bool(info) and run.cfg.hard is not None
    hard = hard and info["difficulty"] >= run.cfg.hard.min_difficulty  # type: ignore[union-attr]
    if hard:
        lines["hard"] = [_labelled_record(run, item, info)]
    entry = {
        "samples": len(o.samples),
        "kept": kept,
        "rejected": len(o.samples) - kept,
        "reasons": dict(Counter(s.reason for s in o.samples if not s.kept)),
        "record_reason": o.record_reason,
        "skipped": bool(item.skip),
        "rl": rl,
        **({"dropped": True} if dropped else {}),
        **info,
        **({"hard": hard} if run.cfg.hard is not None and not item.skip else {}),
        "completion_tokens": sum(s.n_tokens for s in o.samples),
        **{k: v for k, v in o.extra.items() if k in ("pseudo_label", "confidence")},
        "target": "target" in o.extra,
    }
    if o.tokens:
        entry["tokens"] = o.tokens
    return lines, entry


def _labelled_record(run: DistillRun, item: Item, info: dict[str, Any]) -> dict[str, Any]:
    """The record for rl.jsonl / hard.jsonl (image paths relative to the output folder), with
    the attempt label in its ``meta``."""
    rec = rebase_record(item.record, run.image_root, run.out)
    if info:
        rec["meta"] = {**(rec.get("meta") or {}), **info}
    return rec


def _trace_lines(run: DistillRun, o: Outcome, info: dict[str, Any]) -> list[dict]:
    kept = [s for s in o.samples if s.kept]
    if not kept:
        return []
    messages, images = stored_messages(o.messages, run.out)
    return [
        trace_line(
            o.item,
            s,
            messages,
            images,
            teacher=run.cfg.teacher.name,
            template=run.tpl.name,
            extra_meta=info or None,
        )
        for s in kept
    ]
