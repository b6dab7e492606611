"""The lines ``rmkit distill`` writes: SFT trace records, reject lines, CMKD targets.

Trace record (``traces.jsonl``; ``docs/distill.md`` has the field reference)::

    {"id": "<record id>#s<k>", "messages": [...prompt as sent..., {"role": "assistant", ...}],
     "verdict": <candidate index picked>, "correct": true, "teacher": "<model>",
     "order": [1, 0], "images": [...], "label": 0, "template": "default",
     "meta": {"source_id": "<record id>", "sample": k, ...}}

Reject line (``rejects.jsonl``): the sample's id, source id, ``reason`` (the first failed check),
``failed`` (all of them), the parsed verdict, the parser's ``detail`` and the completion text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rmkit.distill.select import Judged

if TYPE_CHECKING:  # pragma: no cover
    from rmkit.distill.config import DistillConfig
    from rmkit.prompts import JudgeTemplate


class DistillRun(Protocol):
    """What turning a record's samples into output lines reads from the run
    (:class:`rmkit.distill.engine.Distiller` is one)."""

    cfg: DistillConfig
    out: Path
    tpl: JudgeTemplate
    image_tpl: JudgeTemplate | None
    image_root: Path
    cmkd_root: Path | None
    strict: bool
    require_format: bool


_TAGS = re.compile(r"</?(?:type|caption|think|answer)>", re.IGNORECASE)


@dataclass
class Item:
    """One unit of work: a record to sample for (CMKD: the caption record and its image record).

    ``id`` keys the done-log; ``order`` is the shown order of the candidates; ``skip`` is a
    record-level reason not to sample at all (e.g. no label while correctness is required).
    """

    id: str
    record: dict[str, Any]
    order: list[int]
    image_record: dict[str, Any] | None = None
    skip: str | None = None


def trace_line(
    item: Item,
    sample: Judged,
    messages: list[dict],
    images: list[str],
    *,
    teacher: str,
    template: str,
    target: str | None = None,
    record_id: str | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An SFT trace record for ``sample`` (``target`` replaces its text as the assistant turn)."""
    rec = item.image_record if item.image_record is not None else item.record
    source_id = record_id or rec["id"]
    meta = {
        "source_id": source_id,
        "source": rec.get("source"),
        "task": rec.get("task"),
        "sample": sample.index,
        "answer": sample.verdict.answer,
        "format_ok": sample.verdict.format_ok,
        "mean_logprob": sample.mean_logprob,
        "n_tokens": sample.n_tokens,
        "finish_reason": sample.finish_reason,
        **(extra_meta or {}),
    }
    return {
        "id": f"{source_id}#s{sample.index}" if target is None else f"{source_id}#cmkd",
        "messages": [*messages, {"role": "assistant", "content": target or sample.text}],
        "verdict": sample.chosen,
        "correct": sample.correct,
        "teacher": teacher,
        "order": list(item.order),
        "images": images,
        "label": rec.get("label"),
        "template": template,
        "meta": meta,
    }


def reject_line(item: Item, sample: Judged) -> dict[str, Any]:
    """Why ``sample`` of ``item`` was not kept, with the completion for inspection."""
    return {
        "id": f"{item.id}#s{sample.index}",
        "source_id": item.id,
        "sample": sample.index,
        "reason": sample.reason,
        "failed": list(sample.failed),
        "verdict": sample.chosen,
        "correct": sample.correct,
        "format_ok": sample.verdict.format_ok,
        "detail": sample.verdict.reason,
        "order": list(item.order),
        "finish_reason": sample.finish_reason,
        "completion": sample.text,
    }


def record_reject_line(item: Item, reason: str, detail: str | None = None) -> dict[str, Any]:
    """A record-level reject (no sample to blame: skipped, tied vote, no usable target)."""
    return {
        "id": item.id,
        "source_id": item.id,
        "sample": None,
        "reason": reason,
        "failed": [reason],
        "detail": detail,
        "order": list(item.order),
    }


def clean_caption(text: str) -> str:
    """Caption text safe inside a ``<caption>`` block (judge tags removed, whitespace trimmed)."""
    return _TAGS.sub("", text).strip()


def caption_target(trace: str, caption: str) -> str:
    """``trace`` with a ``<caption>`` block holding ``caption``.

    The block goes where the MSRL stage-3 format wants it: right after a leading ``<type>``
    block, otherwise first. A ``<caption>`` block the trace already has gets this content.

    >>> caption_target("<type>text</type><think>t</think><answer>A</answer>", "a red square")
    '<type>text</type><caption>a red square</caption><think>t</think><answer>A</answer>'
    """
    block = f"<caption>{clean_caption(caption)}</caption>"
    existing = re.search(r"<caption>.*?</caption>", trace, re.DOTALL | re.IGNORECASE)
    if existing:
        return trace[: existing.start()] + block + trace[existing.end() :]
    lead = re.match(r"\s*<type>.*?</type>", trace, re.DOTALL | re.IGNORECASE)
    if lead:
        return trace[: lead.end()] + block + trace[lead.end() :]
    return block + trace.lstrip()
