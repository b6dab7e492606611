"""Cross-modal knowledge distillation (MSRL stage 2b): targets for the real-image records.

A caption-conditioned model judged the caption-substituted copy of a record; the selected
sample (:func:`rmkit.distill.select.select_cmkd`) becomes the SFT target of the *image* record:
its caption block followed by the trace (:func:`rmkit.distill.outputs.caption_target`), with
the prompt rendered from the image record (real images) by the image template, candidates in
the same order the caption model saw them in (so the verdict letter means the same candidate).
The target must parse with the image template and give the same verdict; otherwise the record
gets no target (reason ``target_format``).
"""

from __future__ import annotations

from typing import Any

from rmkit.distill.inputs import caption_text, stored_messages
from rmkit.distill.outputs import DistillRun, Item, caption_target, reject_line, trace_line
from rmkit.distill.select import Judged
from rmkit.prompts import JudgeTemplate, parse_verdict


def build_target(
    item: Item, sample: Judged, image_tpl: JudgeTemplate, *, strict: bool, require_format: bool
) -> str | None:
    """The image record's SFT target for ``sample``, or None when it does not parse with
    ``image_tpl`` to the same verdict (or, when the format is checked, is not well formed)."""
    assert item.image_record is not None
    target = caption_target(sample.text, caption_text(item.record, item.image_record))
    verdict = parse_verdict(target, image_tpl, len(item.order), strict=strict)
    if verdict.choice != sample.verdict.choice or verdict.outcome != sample.verdict.outcome:
        return None
    if require_format and not verdict.format_ok:
        return None
    return target


def cmkd_lines(
    run: DistillRun, item: Item, samples: list[Judged], extra: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    """Output lines of one caption record (its judged ``samples``, and ``extra`` as
    :func:`rmkit.distill.outcome.judge_item` set it): the image record's trace (when a sample
    was selected) and a reject line for every other sample."""
    from rmkit.prompts import render_judge_messages

    lines: dict[str, list[dict[str, Any]]] = {"traces": [], "rejects": []}
    target = extra.get("target")
    if target is not None:
        assert item.image_record is not None and run.image_tpl is not None
        sent = render_judge_messages(item.image_record, item.order, run.image_tpl, run.cmkd_root)
        messages, images = stored_messages(sent, run.out)
        best = next(s for s in samples if s.kept)
        lines["traces"].append(
            trace_line(
                item,
                best,
                messages,
                images,
                teacher=run.cfg.teacher.name,
                template=run.image_tpl.name,
                target=target,
                extra_meta={
                    "caption_record_id": item.id,
                    "caption_template": run.tpl.name,
                    "reference_label": extra.get("reference"),
                    "pseudo_label": extra.get("pseudo_label"),
                },
            )
        )
    lines["rejects"] = [reject_line(item, s) for s in samples if not s.kept]
    return lines
