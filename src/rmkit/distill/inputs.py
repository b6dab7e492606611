"""Reading distill inputs and preparing what is sent and what is stored.

- Records are unified preference records (``docs/records.md``); an *unlabelled* record (``label``
  null with ``label_kind`` "preferred") is accepted here, because CMKD takes the majority vote
  as its pseudo-label and a teacher run without the correctness filter needs no label.
- ``sample: N`` keeps the N records whose seeded hash of their id ranks lowest: a uniform random
  subset of the whole input that depends only on the seed and the ids (not on the file order),
  so every run and every resume picks the same records, and a larger N picks a superset.
- Each record's candidates are shown in a seeded random order that depends only on the seed and
  the record id, so a resumed run sends exactly the same prompts (and hits the request cache).
- Prompts are rendered with absolute image paths for the backend; the stored copies (trace
  messages, RL records) get image paths relative to the output folder, which is where
  ``rmkit train`` resolves relative paths by default.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

from rmkit.data.records import record_problem
from rmkit.errors import DataError, RmkitError
from rmkit.utils.io import iter_jsonl

GENERATION_TASKS = ("image_generation", "video_generation")


def input_file(path: str | os.PathLike, split: str = "train") -> Path:
    """The records file: ``path`` itself, or ``path/<split>.jsonl`` for a build-data folder,
    checked against the folder's ``manifest.json`` (SECURITY-REVIEW L3)."""
    from rmkit.data.manifest import verify_manifest

    p = Path(path).expanduser()
    if p.is_dir():
        f = p / f"{split}.jsonl"
        if not f.is_file():
            found = sorted(x.stem for x in p.glob("*.jsonl"))
            raise RmkitError(
                f"{p}: no {split}.jsonl in this folder",
                hint=f"pick a split with --split ({', '.join(found)})"
                if found
                else "point --input at a records .jsonl file or a build-data output folder",
            )
        verify_manifest(p, [f.name])
        return f
    if not p.is_file():
        raise RmkitError(f"input not found: {p}", hint="build records with `rmkit build-data`")
    return p


def is_unlabelled(rec: dict[str, Any]) -> bool:
    return rec.get("label") is None and rec.get("label_kind", "preferred") == "preferred"


def read_input(
    path: str | os.PathLike, limit: int | None = None, image_root: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """Validated records of ``path`` (unlabelled ones allowed), ids unique, first ``limit``.

    Every image reference must stay inside ``image_root`` (default: the file's folder) by the
    build-data rule (:func:`rmkit.data.images.resolve_in_roots`: no URL or ``file://``, no
    absolute path, ``..`` or symlink leading outside), so no other local file is ever sent to
    a teacher (SECURITY-REVIEW M5); an error names the file, line, record and path.
    """
    from rmkit.data.images import confine_record_images

    roots = [Path(image_root) if image_root is not None else Path(path).parent]
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        check = {**obj, "label": 0} if isinstance(obj, dict) and is_unlabelled(obj) else obj
        problem = record_problem(check)
        if problem:
            raise DataError(str(path), lineno, problem[0], f"expected {problem[1]}")
        if obj["id"] in seen:
            raise DataError(
                str(path),
                lineno,
                "id",
                f"a unique id ('{obj['id']}' is also on line {seen[obj['id']]})",
                hint="ids key the resumable outputs; deduplicate the records (rmkit build-data "
                "does)",
            )
        seen[obj["id"]] = lineno
        confine_record_images(obj, roots, f"{path}:{lineno}")
        out.append(obj)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise RmkitError(f"{path}: no records", hint="build records with `rmkit build-data`")
    return out


def sample_records(records: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` records drawn uniformly at random (all of them when there are no more), in input
    order.

    A record's draw is the SHA-256 of ``(seed, id)``: the ``n`` lowest are kept, so the subset
    is a pure function of the seed and the set of ids.
    """
    if n >= len(records):
        return list(records)

    def rank(rec: dict[str, Any]) -> bytes:
        return hashlib.sha256(f"distill-sample:{seed}:{rec['id']}".encode()).digest()

    chosen = {id(r) for r in sorted(records, key=rank)[:n]}
    return [r for r in records if id(r) in chosen]


def record_order(record_id: str, n_candidates: int, seed: int) -> list[int]:
    """A seeded random permutation of the candidates, a pure function of (seed, record id)."""
    digest = hashlib.sha256(f"distill-order:{seed}:{record_id}".encode()).digest()
    order = list(range(n_candidates))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return order


def _is_local_ref(ref: str) -> bool:
    return not ref.startswith(("data:", "http://", "https://", "file://"))


def relative_ref(ref: str, root: Path | None, out_dir: Path) -> str:
    """``ref`` (relative to ``root``, or absolute) as a path relative to ``out_dir``."""
    if not _is_local_ref(ref):
        return ref
    path = Path(ref) if Path(ref).is_absolute() or root is None else root / ref
    return os.path.relpath(path.absolute(), out_dir.absolute())


def stored_messages(messages: list[dict], out_dir: Path) -> tuple[list[dict], list[str]]:
    """Messages as stored in a trace record (image paths relative to ``out_dir``) and the image
    references they hold, in order."""
    refs: list[str] = []
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") in ("image", "video"):
                    key = part["type"]
                    ref = relative_ref(part[key], None, out_dir)
                    refs.append(ref)
                    part = {"type": key, key: ref}
                parts.append(part)
            content = parts
        out.append({"role": m["role"], "content": content})
    return out, list(dict.fromkeys(refs))


def rebase_record(rec: dict[str, Any], root: Path | None, out_dir: Path) -> dict[str, Any]:
    """A copy of a preference record whose image references are relative to ``out_dir``."""
    out = dict(rec)
    out["images"] = [relative_ref(r, root, out_dir) for r in rec.get("images") or []]
    prompt = rec.get("prompt")
    if isinstance(prompt, list):
        msgs = []
        for m in prompt:
            content = m.get("content")
            if isinstance(content, list):
                content = [
                    {**p, "image": relative_ref(p["image"], root, out_dir)}
                    if p.get("type") == "image"
                    else p
                    for p in content
                ]
            msgs.append({**m, "content": content})
        out["prompt"] = msgs
    meta = rec.get("meta") or {}
    if rec.get("task") in GENERATION_TASKS and not meta.get("caption_substituted"):
        out["candidates"] = [relative_ref(c, root, out_dir) for c in rec["candidates"]]
    return out


def pair_caption_records(
    caption_records: list[dict[str, Any]], image_records: list[dict[str, Any]], image_path: Path
) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each caption-substituted record with the image record it was made from (None if absent).

    The link is ``meta.image_record_id`` (written by ``rmkit build-data caption``).
    """
    by_id = {r["id"]: r for r in image_records}
    pairs = []
    for rec in caption_records:
        target = (rec.get("meta") or {}).get("image_record_id")
        if not isinstance(target, str):
            raise RmkitError(
                f"record {rec['id']}: not a caption-substituted record (no meta.image_record_id)",
                hint="make caption records with `rmkit build-data caption DIR --output OUT` and "
                "pass them as --input",
            )
        pairs.append((rec, by_id.get(target)))
    if caption_records and all(img is None for _, img in pairs):
        raise RmkitError(
            f"none of the caption records maps to a record of {image_path}",
            hint="pass the records the captions were made from as --image-records",
        )
    return pairs


def caption_text(caption_record: dict[str, Any], image_record: dict[str, Any]) -> str:
    """The caption block's text: the image record's images described in order.

    One image: its caption. Several: ``Image k: caption`` lines in the image record's order.
    """
    from rmkit.data.images import record_image_refs

    captions = caption_record.get("captions") or {}
    refs = [r for r in record_image_refs(image_record) if r in captions]
    if not refs:
        refs = list(captions)
    texts = [captions[r].strip() for r in refs]
    if not texts:
        raise RmkitError(
            f"record {caption_record['id']}: no captions",
            hint="caption records carry a 'captions' map (image reference -> caption)",
        )
    if len(texts) == 1:
        return texts[0]
    return "\n".join(f"Image {i}: {t}" for i, t in enumerate(texts, 1))
