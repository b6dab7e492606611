"""Training data: records from a file or a build-data folder, a resumable data order, sharding.

The data order is a pure function of ``(seed, epoch)``: every epoch is a seeded permutation of
the record indices, cut into global batches of ``per_step`` records (a trailing partial batch
is dropped, so every step has the same size on every process). A step's global batch is split
over processes by position (rank ``r`` takes positions ``r, r + world, ...``), so one process
with batch 2B and two processes with batch B see the same records in the same step. The
position ``(epoch, index)`` goes into every checkpoint.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmkit.data.images import IMAGE_ROOTS_FILE  # written by rmkit distill beside its traces
from rmkit.errors import DataError, RmkitError

log = logging.getLogger(__name__)


def records_file(path: str, split: str) -> Path:
    """The JSONL file for ``path``: the file itself, or ``<folder>/<split>.jsonl`` checked
    against the folder's ``manifest.json`` (:func:`rmkit.data.manifest.verify_manifest`: a
    folder must be a complete build whose split file was not changed since; SECURITY-REVIEW L3).
    """
    from rmkit.data.manifest import verify_manifest

    p = Path(path)
    if p.is_dir():
        f = p / f"{split}.jsonl"
        if not f.is_file():
            found = sorted(x.stem for x in p.glob("*.jsonl"))
            raise RmkitError(
                f"data.path {p}: no {split}.jsonl in this folder",
                hint=f"set data.split to one of: {', '.join(found)}"
                if found
                else "point data.path at a records .jsonl file or a build-data output folder",
            )
        verify_manifest(p, [f.name])
        return f
    if not p.is_file():
        raise RmkitError(
            f"data.path {p}: no such file or folder",
            hint="paths in a recipe are relative to the recipe file's folder",
        )
    return p


def image_roots(records_path: Path, image_root: str | Path | None = None) -> list[Path]:
    """The folders training images may come from, in the order relative paths are tried:
    ``data.image_root`` (when set), the records file's folder, and the roots ``rmkit distill``
    recorded in ``image_roots.json`` beside its traces (paths relative to that folder)."""
    folder = records_path.parent
    roots = [Path(image_root)] if image_root else []
    roots.append(folder)
    recorded = folder / IMAGE_ROOTS_FILE
    if recorded.is_file():
        from rmkit.utils.io import read_json

        obj = read_json(recorded) if recorded.stat().st_size else None
        entries = obj.get("image_roots") if isinstance(obj, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise RmkitError(
                f'{recorded}: expected {{"image_roots": [folder, ...]}}',
                hint="rmkit distill writes this file; rerun the distill or remove the file",
            )
        roots += [folder / e for e in entries]
    return list(dict.fromkeys(roots))


def load_training_records(
    path: str, split: str, stage: str, image_root: str | Path | None = None
) -> tuple[list[dict], Path]:
    """Validated records (trace records for SFT, preference records for RL) and their file.

    Every local image reference is confined to :func:`image_roots` by the build-data rule and
    replaced by the real path it resolves to; a reference that leaves the roots stops here,
    naming the file, line, record and path.
    """
    from rmkit.data.records import record_problem, trace_problem
    from rmkit.utils.io import iter_jsonl

    f = records_file(path, split)
    roots = image_roots(f, image_root)
    kind = "trace" if stage == "sft" else "preference"
    check = trace_problem if stage == "sft" else record_problem
    records = []
    for lineno, obj in iter_jsonl(f):
        problem = check(obj)
        if problem:
            raise DataError(str(f), lineno, problem[0], f"expected {problem[1]}")
        records.append(confine_images(obj, roots, f"{f}:{lineno}"))
    if not records:
        raise RmkitError(f"{f}: no records", hint="build data with `rmkit build-data` first")
    log.info("%d %s records from %s", len(records), kind, f)
    return records, f


def confine_images(record: dict[str, Any], roots: list[Path], where: str) -> dict[str, Any]:
    """``record`` with every local image reference (``images``, image parts of ``prompt`` and
    ``messages``, generation candidates) replaced by its real path inside ``roots``."""
    from rmkit.data.images import confine_record_images

    refs = list(record_image_refs_all(record))
    found = confine_record_images({"id": record.get("id"), "images": refs}, roots, where)
    if not found:
        return record

    def real(ref: Any) -> Any:
        return found.get(ref, ref) if isinstance(ref, str) else ref

    out = dict(record)
    if isinstance(record.get("images"), list):
        out["images"] = [real(r) for r in record["images"]]
    for key in ("prompt", "messages"):
        if isinstance(record.get(key), list):
            out[key] = [_real_parts(m, real) for m in record[key]]
    if _image_candidates(record):
        out["candidates"] = [real(c) for c in record["candidates"]]
    return out


def record_image_refs_all(record: dict[str, Any]) -> list[str]:
    """Every image reference of a preference or trace record (``messages`` included)."""
    from rmkit.data.images import record_image_refs

    refs = record_image_refs(record)
    for m in record.get("messages") or []:
        refs += [p["image"] for p in _image_parts(m) if isinstance(p.get("image"), str)]
    return list(dict.fromkeys(refs))


def _image_parts(message: Any) -> list[dict]:
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return []
    return [p for p in content if isinstance(p, dict) and p.get("type") == "image"]


def _real_parts(message: Any, real: Any) -> Any:
    if not _image_parts(message):
        return message
    content = [
        {**p, "image": real(p.get("image"))}
        if isinstance(p, dict) and p.get("type") == "image"
        else p
        for p in message["content"]
    ]
    return {**message, "content": content}


def _image_candidates(record: dict[str, Any]) -> bool:
    from rmkit.data.images import GENERATION_TASKS

    meta = record.get("meta") or {}
    return record.get("task") in GENERATION_TASKS and not meta.get("caption_substituted")


def resolve_messages(messages: list[dict], roots: Path | list[Path] | None) -> list[dict]:
    """Trace messages for the model: image parts as real paths, caption parts made text.

    Each image reference (other than an inline ``data:`` URL) must resolve inside ``roots``
    by the build-data rule (:func:`rmkit.data.images.resolve_in_roots`: no URL or ``file://``,
    no absolute path, ``..`` or symlink leading outside; see docs/records.md).
    """
    from rmkit.data.images import ImageError, resolve_in_roots
    from rmkit.prompts import caption_block

    allowed = [roots] if isinstance(roots, Path) else list(roots or [])
    out = []
    for msg in messages:
        content = msg["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part["type"] == "image":
                    ref = part["image"]
                    if not (isinstance(ref, str) and ref.startswith("data:")):
                        try:
                            ref = str(resolve_in_roots(ref, allowed, "messages"))
                        except ImageError as e:
                            raise RmkitError(e.message, hint=e.hint) from None
                    parts.append({"type": "image", "image": ref})
                elif part["type"] == "caption":
                    parts.append({"type": "text", "text": caption_block(part["text"])})
                else:
                    parts.append({"type": "text", "text": part["text"]})
            content = parts
        out.append({"role": msg["role"], "content": content})
    return out


def judge_order(record: dict[str, Any], seed: int, epoch: int) -> list[int]:
    """A seeded random order to show the record's candidates in (balanced in expectation).

    Depends only on (seed, epoch, record id), so every process and a resumed run agree.
    """
    order = list(range(len(record["candidates"])))
    random.Random(f"order:{seed}:{epoch}:{record.get('id')}").shuffle(order)
    return order


@dataclass
class DataOrder:
    """Epoch-wise seeded permutation of ``n`` records, served in global batches of ``per_step``."""

    n: int
    per_step: int
    seed: int
    shuffle: bool = True
    epoch: int = 0
    index: int = 0

    def __post_init__(self) -> None:
        if self.n < self.per_step:
            raise RmkitError(
                f"the data has {self.n} records but one step needs {self.per_step}",
                hint="lower the batch size (batch.prompts_per_step / batch.sequences_per_step) "
                "or add data",
            )
        self._perm_epoch: int | None = None
        self._perm: list[int] = []

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.per_step

    def permutation(self, epoch: int) -> list[int]:
        if self._perm_epoch != epoch:
            perm = list(range(self.n))
            if self.shuffle:
                random.Random(f"data:{self.seed}:{epoch}").shuffle(perm)
            self._perm, self._perm_epoch = perm, epoch
        return self._perm

    def next_batch(self) -> tuple[int, list[int]]:
        """``(epoch, global record indices)`` of the next step; advances the position."""
        if self.index + self.per_step > self.n:
            self.epoch, self.index = self.epoch + 1, 0
        batch = self.permutation(self.epoch)[self.index : self.index + self.per_step]
        epoch = self.epoch
        self.index += self.per_step
        return epoch, batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "shuffle_seed": self.seed}

    def load_state(self, state: dict[str, int]) -> None:
        if state.get("shuffle_seed", self.seed) != self.seed:
            raise RmkitError(
                f"the checkpoint was written with seed {state['shuffle_seed']}, this run has "
                f"seed {self.seed}",
                hint="resume with the same seed (or start a new output folder)",
            )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def shard(batch: list[int], rank: int, world: int) -> list[int]:
    """This process's part of a global batch: positions ``rank, rank + world, ...``."""
    return batch[rank::world]


def total_steps(max_steps: int | None, epochs: float | None, steps_per_epoch: int) -> int:
    """Steps to run: ``max_steps``, ``epochs`` worth of steps, or the smaller of the two."""
    limits = []
    if max_steps is not None:
        limits.append(max_steps)
    if epochs is not None:
        limits.append(max(1, int(epochs * steps_per_epoch)))
    return min(limits)
