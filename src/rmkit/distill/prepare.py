"""Setting a distill run up: the work items, template checks, backends, the settings fingerprint,
and the optional consistency filter (a judge call per chunk)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rmkit.distill import select as S
from rmkit.distill.config import DistillConfig
from rmkit.distill.inputs import (
    input_file,
    is_unlabelled,
    pair_caption_records,
    read_input,
    record_order,
    sample_records,
)
from rmkit.distill.outputs import Item
from rmkit.errors import ConfigError, RmkitError
from rmkit.generation.config import BackendConfig
from rmkit.prompts import JudgeTemplate

log = logging.getLogger(__name__)


def fingerprint(cfg: DistillConfig) -> dict[str, Any]:
    """The settings that decide a run's outputs (a resumed run must use the same)."""
    cons = cfg.filters.consistency
    sampling = cfg.sampling.model_dump()
    if sampling.get("attempts") == 1:  # the default: folders from before the option still match
        del sampling["attempts"]
    for key, neutral in (("top_k", 0), ("repetition_penalty", 1.0)):  # the same, for these
        if sampling.get(key) == neutral:
            del sampling[key]
    out = {
        "mode": cfg.mode,
        "teacher": cfg.teacher.name,
        "template": cfg.template,
        "sampling": sampling,
        "filters": {
            "correct": cfg.filters.correct,
            "format": cfg.filters.format,
            "dedupe": cfg.filters.dedupe,
            "consistency": None if cons is None else cons.judge.name,
        },
        "seed": cfg.seed,
        "keep": cfg.rejection.keep if cfg.mode == "rejection-sampling" else None,
        "image_template": cfg.cmkd.image_template if cfg.mode == "cmkd" else None,
    }
    # settings added later: only when set, so folders from before them still resume
    if cfg.hard is not None:
        out["hard"] = cfg.hard.min_difficulty
    if cfg.mode == "rejection-sampling" and cfg.rejection.rl != "not_kept":
        out["rl"] = cfg.rejection.rl
    return out


def make_generator(
    gen: BackendConfig, cache_dir: Path | None, server_log: Path | None = None
) -> Any:
    """A generation backend for ``gen`` (API backends cache every answer in ``cache_dir``; a
    server launched for it logs to ``server_log``)."""
    return gen.build(cache_dir=cache_dir, on_error="raise", server_log=server_log)


def check_templates(tpl: JudgeTemplate, image_tpl: JudgeTemplate | None) -> None:
    """Distill needs a pairwise template; CMKD's image template must want the caption model's
    blocks plus ``<caption>``, with the same answer vocabulary."""
    if tpl.is_pointwise:
        raise ConfigError(
            f"template '{tpl.name}' is pointwise; distill needs a pairwise judge template",
            hint="e.g. --template default, unified-understanding, msrl",
        )
    if image_tpl is None:
        return
    blocks, img_blocks = tuple(tpl.blocks), tuple(image_tpl.blocks)
    if "caption" not in img_blocks or tuple(b for b in img_blocks if b != "caption") != blocks:
        raise ConfigError(
            f"CMKD: image template '{image_tpl.name}' has blocks {list(img_blocks)}, "
            f"but the caption model's template '{tpl.name}' writes {list(blocks)}",
            hint="the image template must want the caption model's blocks plus <caption> "
            "(e.g. --template msrl with cmkd.image_template msrl-caption)",
        )
    if tpl.answers(2) != image_tpl.answers(2):
        raise ConfigError(
            f"CMKD: templates '{tpl.name}' and '{image_tpl.name}' use different answers "
            f"({tpl.answers(2)} vs {image_tpl.answers(2)})",
            hint="pick templates with the same answer vocabulary",
        )


def label_reason(rec: dict[str, Any], cfg: DistillConfig, tpl: JudgeTemplate) -> str | None:
    """Why a record is not sampled for lack of a usable label (None when it is sampled).

    Unlabelled records are skipped while correctness is required, except in CMKD (majority
    vote); tie/both-bad labels need a template with that outcome.
    """
    kind = rec.get("label_kind", "preferred")
    if not cfg.filters.correct:
        return None
    if kind == "preferred":
        return S.NO_LABEL if is_unlabelled(rec) and cfg.mode != "cmkd" else None
    return None if kind in set(tpl.spec.outcomes.values()) else S.NO_LABEL


def load_items(
    cfg: DistillConfig, tpl: JudgeTemplate, src_file: Path
) -> tuple[list[Item], Path | None]:
    """The run's work items, and for CMKD the folder the image records' paths start from."""
    records = read_input(src_file, cfg.limit, cfg.image_root)
    if cfg.sample is not None:
        if cfg.sample >= len(records):
            log.warning(
                "sample %d: the input has only %d record(s); using all of them",
                cfg.sample,
                len(records),
            )
        records = sample_records(records, cfg.sample, cfg.seed)
    if cfg.mode != "cmkd":
        items = [
            Item(
                r["id"],
                r,
                record_order(r["id"], len(r["candidates"]), cfg.seed),
                skip=label_reason(r, cfg, tpl),
            )
            for r in records
        ]
        return items, None
    img_path = input_file(str(cfg.cmkd.image_records), cfg.split)
    root = Path(cfg.cmkd.image_root) if cfg.cmkd.image_root else img_path.parent
    items = []
    for rec, img in pair_caption_records(records, read_input(img_path, None, root), img_path):
        if img is not None and len(img["candidates"]) != len(rec["candidates"]):
            raise RmkitError(
                f"caption record {rec['id']} has {len(rec['candidates'])} candidates, its "
                f"image record {img['id']} {len(img['candidates'])}",
                hint="pass the records the captions were made from as --image-records",
            )
        order = record_order(rec["id"], len(rec["candidates"]), cfg.seed)
        skip = S.NO_IMAGE_RECORD if img is None else label_reason(rec, cfg, tpl)
        items.append(Item(rec["id"], rec, order, image_record=img, skip=skip))
    return items, root


def filter_consistency(
    pairs: list[tuple[Item, S.Judged]],
    judge: Any,
    *,
    tpl: JudgeTemplate,
    strict: bool,
    last_lines: int,
    max_chars: int,
) -> None:
    """Ask the consistency judge about every given (still kept) sample in one batched call;
    mark those whose answer disagrees with their reasoning ``inconsistent``."""
    if not pairs:
        return
    from rmkit.rewards import consistency, make_sample

    samples = [
        make_sample(item.record, item.order, s.text, template=tpl, strict=strict, index=s.index)
        for item, s in pairs
    ]
    scores = consistency(samples, judge, "paper", last_lines=last_lines, max_chars=max_chars)
    for (_, s), score in zip(pairs, scores, strict=True):
        if score < 1.0:
            s.fail(S.INCONSISTENT)
