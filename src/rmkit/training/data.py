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

from rmkit.errors import RmkitError

log = logging.getLogger(__name__)


def records_file(path: str, split: str) -> Path:
    """The JSONL file for ``path``: the file itself, or ``<folder>/<split>.jsonl``."""
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
        return f
    if not p.is_file():
        raise RmkitError(
            f"data.path {p}: no such file or folder",
            hint="paths in a recipe are relative to the recipe file's folder",
        )
    return p


def load_training_records(path: str, split: str, stage: str) -> tuple[list[dict], Path]:
    """Validated records (trace records for SFT, preference records for RL) and their file."""
    from rmkit.data.records import load_records

    f = records_file(path, split)
    records = load_records(f, "trace" if stage == "sft" else "record")
    if not records:
        raise RmkitError(f"{f}: no records", hint="build data with `rmkit build-data` first")
    log.info("%d %s records from %s", len(records), "trace" if stage == "sft" else "preference", f)
    return records, f


def resolve_messages(messages: list[dict], image_root: Path | None) -> list[dict]:
    """Trace messages for the model: image parts made absolute, caption parts made text.

    A URL image reference (``file://`` included) is refused: trace images are paths. Paths are
    not confined to ``image_root``: traces written by ``rmkit distill`` point back into the
    dataset the distill read (``../data/images/...``); see docs/records.md.
    """
    from rmkit.data.images import ImageError, resolve_in_roots
    from rmkit.prompts import caption_block

    out = []
    for msg in messages:
        content = msg["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part["type"] == "image":
                    ref = part["image"]
                    if isinstance(ref, str) and "://" in ref:
                        try:
                            resolve_in_roots(ref, [image_root or Path(".")], "messages")
                        except ImageError as e:
                            raise RmkitError(e.message, hint=e.hint) from None
                    if image_root is not None and not Path(ref).is_absolute():
                        ref = str(image_root / ref)
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
