"""Mix record sets with given ratios or counts and a seed (e.g. MSRL stage 2: 4 caption : 1 text).

A part is a built dataset folder (its ``train/val/test.jsonl``) or a single ``.jsonl`` file
(read as the ``train`` split). Each split is mixed on its own:

- ``by="ratio"``: the numbers are weights, reduced to the smallest integers with the same
  ratio (0.8 : 0.2 -> 4 : 1). Without ``total`` the mix is the largest one with exactly that
  ratio: ``k = min(available_i // w_i)`` units, ``n_i = k * w_i``. With ``total`` the counts are
  ``total * w_i / sum(w)`` (largest remainders get the rounding).
- ``by="count"``: the numbers are the counts to take.

A part that has fewer records than asked for is an error, unless ``repeat`` is on: then it is
taken whole as often as needed (repeated records get ids ``<id>#m2``, ``#m3``, ...) plus a
sample. Which records are taken is a seeded sample without replacement (selection sampling:
one pass, constant memory); the output interleaves the parts in a seeded random order while
each part's records keep their relative order. Records are validated; an id that appears twice
in a mix is an error. Image files that mixed records refer to are copied (hard-linked where
possible) into ``OUT/images`` so the mix is self-contained. The folder is written into a staging
folder and swapped in as a whole (:mod:`rmkit.data.staging`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import orjson

from rmkit import __version__
from rmkit.data.images import record_image_refs, write_file_atomic
from rmkit.data.manifest import verify_manifest
from rmkit.data.records import record_problem
from rmkit.data.staging import staged
from rmkit.errors import DataError, RmkitError
from rmkit.utils.io import HashingWriter, atomic_open, dumps_line, write_json_atomic
from rmkit.utils.lock import lock_output

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def parse_part(text: str) -> tuple[str, float]:
    """``PATH=NUMBER`` (or just ``PATH``, weight 1) -> (path, number)."""
    path, sep, num = text.rpartition("=")
    if not sep:
        return text, 1.0
    try:
        value = float(num)
    except ValueError:
        raise RmkitError(
            f"--part '{text}': '{num}' is not a number",
            hint="write PATH=WEIGHT, e.g. --part data/captioned=4",
        ) from None
    if not path or not math.isfinite(value) or value <= 0:
        raise RmkitError(
            f"--part '{text}': needs a path and a number > 0", hint="e.g. --part data/captioned=4"
        )
    return path, value


def integer_weights(weights: list[float]) -> list[int]:
    """The smallest positive integers with the same ratios: [0.8, 0.2] -> [4, 1]; [2, 6] -> [1, 3]."""
    fracs = [Fraction(str(w)).limit_denominator(10**6) for w in weights]
    scale = math.lcm(*(f.denominator for f in fracs))
    ints = [int(f * scale) for f in fracs]
    g = math.gcd(*ints)
    return [i // g for i in ints]


def plan_counts(
    available: list[int],
    amounts: list[float],
    by: str = "ratio",
    total: int | None = None,
    repeat: bool = False,
) -> list[int]:
    """How many records to take from each part (see the module docstring).

    E.g. available [1000, 300], amounts [4, 1], ratio -> [1000, 250]; with total=500 -> [400, 100].
    """
    if by == "count":
        counts = [int(a) for a in amounts]
        if any(a != int(a) for a in amounts):
            raise RmkitError(f"counts must be whole numbers (got {amounts})")
    elif by == "ratio":
        w = integer_weights(amounts)
        if total is None:
            k = min(n // wi for n, wi in zip(available, w, strict=True))
            return [k * wi for wi in w]
        exact = [Fraction(total * wi, sum(w)) for wi in w]
        counts = [math.floor(x) for x in exact]
        order = sorted(range(len(w)), key=lambda i: (-(exact[i] - counts[i]), i))
        for i in order[: total - sum(counts)]:
            counts[i] += 1
    else:
        raise RmkitError(f"unknown mix mode '{by}'", hint="use ratio or count")
    short = [i for i, (n, c) in enumerate(zip(available, counts, strict=True)) if c > n]
    if short and not repeat:
        i = short[0]
        raise RmkitError(
            f"part {i + 1} has {available[i]} record(s), {counts[i]} asked for",
            hint="lower the numbers, or pass --repeat to reuse records",
        )
    return counts


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                yield lineno, line


def select(
    path: Path, available: int, want: int, rng: random.Random
) -> Iterator[tuple[int, int, bytes]]:
    """``want`` lines of ``path`` as ``(copy, line number, line)``: whole passes, then a sample.

    The sample is selection sampling (Knuth's algorithm S): line ``t`` is taken with probability
    (still needed) / (lines left), which takes exactly ``want % available`` lines in one pass.
    """
    full, rest = divmod(want, available) if available else (0, 0)
    for copy in range(full):
        for lineno, line in _lines(path):
            yield copy, lineno, line
    taken = 0
    for t, (lineno, line) in enumerate(_lines(path)) if rest else ():
        if rng.random() * (available - t) < rest - taken:
            taken += 1
            yield full, lineno, line
            if taken == rest:
                break


class _Mixer:
    def __init__(self, parts: list[tuple[Path, float]], out: Path, seed: int):
        self.parts, self.out, self.seed = parts, out, seed
        self.ids: set[bytes] = set()
        self.images: set[str] = set()

    def part_file(self, i: int, split: str) -> Path | None:
        p = self.parts[i][0]
        if p.is_dir():
            f = p / f"{split}.jsonl"
            # a dataset folder: complete, and its split file matches its manifest (SECURITY-REVIEW L3)
            verify_manifest(p, [f.name] if f.is_file() else [])
            return f if f.is_file() else None
        return p if split == "train" else None

    def run_split(self, split: str, by: str, total: int | None, repeat: bool) -> dict[str, Any]:
        files = [self.part_file(i, split) for i in range(len(self.parts))]
        avail = [sum(1 for _ in _lines(f)) if f else 0 for f in files]
        counts = plan_counts(avail, [a for _, a in self.parts], by, total, repeat)
        order = bytearray(i for i, c in enumerate(counts) for _ in range(c))
        random.Random(f"{self.seed}:{split}:order").shuffle(order)
        streams = [
            select(f, n, c, random.Random(f"{self.seed}:{split}:{i}")) if f and c else iter(())
            for i, (f, n, c) in enumerate(zip(files, avail, counts, strict=True))
        ]
        with atomic_open(self.out / f"{split}.jsonl", "wb") as fh:
            out = HashingWriter(fh)
            for i in order:
                copy, lineno, line = next(streams[i])
                out.write(self._check(line, files[i], lineno, copy))
        return {
            "available": avail,
            "taken": counts,
            "sha256": out.sha.hexdigest(),
            "records": sum(counts),
        }

    def _check(self, line: bytes, path: Path | None, lineno: int, copy: int) -> bytes:
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise DataError(str(path), lineno, None, f"invalid JSON ({e})") from None
        problem = record_problem(rec)
        if problem:
            raise DataError(str(path), lineno, problem[0], f"expected {problem[1]}")
        if copy:
            rec["id"] = f"{rec['id']}#m{copy + 1}"
            line = dumps_line(rec)
        digest = hashlib.blake2b(rec["id"].encode(), digest_size=12).digest()
        if digest in self.ids:
            raise RmkitError(
                f"record id '{rec['id']}' occurs twice in the mix (from {path})",
                hint="do not mix a dataset with itself; ids must be unique",
            )
        self.ids.add(digest)
        if rec["task"] != "text":
            assert path is not None
            for ref in record_image_refs(rec):
                self._copy_image(path.parent, ref)
        return line if line.endswith(b"\n") else line + b"\n"

    def _copy_image(self, root: Path, ref: str) -> None:
        if ref in self.images:
            return
        src, dst = root / ref, self.out / ref
        if Path(ref).is_absolute() or ".." in Path(ref).parts:
            raise RmkitError(
                f"image reference {ref!r} is not a path inside its dataset",
                hint="mix datasets built by rmkit build-data",
            )
        if not src.is_file():
            raise RmkitError(f"image {ref} of a mixed record is missing under {root}")
        if not dst.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                tmp = dst.with_name(f".rmkit-tmp-{dst.name}.{os.getpid()}")
                os.link(src, tmp)
                os.replace(tmp, dst)
            except OSError:
                write_file_atomic(dst, src.read_bytes())
        self.images.add(ref)


MIX_FILES = frozenset({*(f"{s}.jsonl" for s in SPLITS), "manifest.json", "images"})


def mix_datasets(
    parts: list[tuple[str | Path, float]],
    output: str | Path,
    *,
    seed: int = 0,
    by: str = "ratio",
    total: int | None = None,
    splits: list[str] | None = None,
    repeat: bool = False,
) -> dict[str, Any]:
    """Mix ``parts`` (``(path, weight or count)``) into ``output``; returns the manifest.

    The output folder is written as a whole (:mod:`rmkit.data.staging`): a failed or killed
    mix leaves the previous content as it was.
    """
    from rmkit.data.staging import check_foreign, check_output_vs_inputs

    if len(parts) < 2:
        raise RmkitError("a mix needs at least two parts", hint="repeat --part PATH=NUMBER")
    resolved = [(Path(p), float(a)) for p, a in parts]
    for p, _ in resolved:
        if not p.exists():
            raise RmkitError(f"mix part not found: {p}")
    out = Path(output)
    if len(parts) > 255:
        raise RmkitError("a mix takes at most 255 parts")
    check_output_vs_inputs(out, [p for p, _ in resolved])
    chosen = (
        list(splits) if splits else (list(SPLITS) if by == "ratio" and total is None else ["train"])
    )
    bad = [s for s in chosen if s not in SPLITS]
    if bad:
        raise RmkitError(f"unknown split '{bad[0]}'", hint="splits are train, val, test")
    check_foreign(out, MIX_FILES, "rmkit build-data mix")
    with lock_output(out, what="mix output"), staged(out.resolve()) as stage:
        manifest = _mix_into(stage, resolved, chosen, seed, by, total, repeat)
    log.info("wrote %s: %s", out, {k: v["records"] for k, v in manifest["outputs"].items()})
    return manifest


def _mix_into(
    stage: Path,
    resolved: list[tuple[Path, float]],
    chosen: list[str],
    seed: int,
    by: str,
    total: int | None,
    repeat: bool,
) -> dict[str, Any]:
    """Write the mix and its manifest into the (empty) staging folder ``stage``."""
    mixer = _Mixer(resolved, stage, seed)
    per_split, outputs = {}, {}
    for split in SPLITS:
        if split in chosen:
            info = mixer.run_split(split, by, total, repeat)
        else:
            with atomic_open(stage / f"{split}.jsonl", "wb"):
                pass
            info = {
                "available": None,
                "taken": [0] * len(resolved),
                "sha256": hashlib.sha256(b"").hexdigest(),
                "records": 0,
            }
        per_split[split] = info
        outputs[f"{split}.jsonl"] = {"records": info["records"], "sha256": info["sha256"]}
    manifest = {
        "rmkit_version": __version__,
        "kind": "mix",
        "seed": seed,
        "by": by,
        "total": total,
        "repeat": repeat,
        "parts": [
            {
                "path": str(p),
                ("weight" if by == "ratio" else "count"): a,
                "available": {
                    s: per_split[s]["available"][i] if per_split[s]["available"] else None
                    for s in SPLITS
                },
                "taken": {s: per_split[s]["taken"][i] for s in SPLITS},
            }
            for i, (p, a) in enumerate(resolved)
        ],
        "outputs": outputs,
        "images": {"files": len(mixer.images)},
    }
    write_json_atomic(stage / "manifest.json", manifest)
    return manifest
