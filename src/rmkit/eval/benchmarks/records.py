"""Unified records (``docs/records.md``), e.g. a held-out split written by ``rmkit build-data``.

``--data`` is a records JSONL file or a built dataset folder (``<split>.jsonl`` inside it,
default ``test``). Image references are relative to the file's folder. Categories are the
record ``task``; subcategories the ``source``. Tie / both-bad records carry no preferred
candidate and are skipped (counted). Protocol ``strict`` (headline): the voting@k majority
must be the labelled candidate; unparsable = wrong. A record's ``cluster`` travels in the
item's ``extra`` (and so into every prediction line), where ``rmkit eval compare`` and the
pipeline report find it for the cluster bootstrap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rmkit.errors import RmkitError
from rmkit.eval.items import EvalItem, LoadResult
from rmkit.eval.metrics import BenchScore, ItemResult, accuracy_protocol
from rmkit.eval.tables import ImageStore, LoadContext, log_loaded


def records_file(data: Path, split: str | None) -> Path:
    """The JSONL file to read: ``data`` itself, or ``<data>/<split>.jsonl`` checked against the
    folder's ``manifest.json`` (SECURITY-REVIEW L3)."""
    from rmkit.data.manifest import verify_manifest

    if data.is_file():
        return data
    name = f"{split or 'test'}.jsonl"
    if (data / name).is_file():
        verify_manifest(data, [name])
        return data / name
    found = sorted(p.name for p in data.glob("*.jsonl")) if data.is_dir() else []
    raise RmkitError(
        f"no records file {data / name}" + (f" (found: {', '.join(found)})" if found else ""),
        hint="pass the .jsonl file itself, or choose the split with --split",
    )


def load(ctx: LoadContext) -> LoadResult:
    from rmkit.data.records import read_records

    path = records_file(ctx.data, ctx.split)
    res = LoadResult(items=[], n_rows=0, files=[str(path)])
    store = ctx.record_images(path.parent)
    for rec in read_records(path):
        res.n_rows += 1
        if rec.get("label_kind", "preferred") != "preferred":
            res.skip(f"label_kind {rec['label_kind']}")
            continue
        where, rid = (path, res.n_rows), rec["id"]
        images = [store.get(ref, where, "images", rid) for ref in rec.get("images", [])]
        cands = list(rec["candidates"])
        if rec["task"] in ("image_generation", "video_generation") and not rec["meta"].get(
            "caption_substituted"
        ):
            cands = [store.get(c, where, "candidates", rid) for c in cands]
        res.items.append(
            EvalItem(
                id=rec["id"],
                category=rec["task"],
                subcategory=rec["source"],
                prompt=_resolve_prompt(rec["prompt"], store, where, rid),
                candidates=cands,
                label=rec["label"],
                task=rec["task"],
                images=images,
                extra=_extra(rec),
            )
        )
    log_loaded("records", res.n_rows, len(res.items), res.skipped)
    return res


def _extra(rec: dict[str, Any]) -> dict[str, Any]:
    """Protocol fields of a record's item: its source, and its ``cluster`` when it has one."""
    extra: dict[str, Any] = {"source": rec["source"]}
    if rec.get("cluster") is not None:
        extra["cluster"] = rec["cluster"]
    return extra


def _resolve_prompt(prompt: Any, store: ImageStore, where: tuple, rid: str) -> Any:
    """A chat prompt with its inline image parts made absolute (strings pass through)."""
    if isinstance(prompt, str):
        return prompt
    out = []
    for msg in prompt:
        content = msg["content"]
        if isinstance(content, list):
            content = [
                {**part, "image": store.get(part["image"], where, "prompt", rid)}
                if part.get("type") == "image"
                else part
                for part in content
            ]
        out.append({**msg, "content": content})
    return out


def score(items: list[ItemResult]) -> BenchScore:
    return BenchScore(
        headline="strict",
        protocols={"strict": accuracy_protocol(items, lambda it: float(it.strict_correct))},
        item_scores={it.id: float(it.strict_correct) for it in items},
    )
