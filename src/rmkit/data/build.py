"""The ``build-data`` pipeline: sources -> converters -> filters -> dedup -> split -> balance -> files.

Streaming: rows are converted and written one at a time, so memory stays flat (what grows is a
set of 16-byte content digests for deduplication, plus at most ``cap`` records for a capped source).
Images (image converters) are decoded, checked and written one at a time into ``images/`` by
:class:`~rmkit.data.images.ImageStore`; files no kept record refers to are removed at the end.

Determinism: the same inputs, config and seed give byte-identical outputs. Splits depend only on
the prompt text and ``splits.salt`` (never on the seed), so a held-out prompt stays held out
when you rebuild with another seed or add sources. Candidate order is balanced exactly: within each
split and candidate count, the preferred position is drawn from a seeded shuffled deck of all
positions, so with two candidates the preferred one is first in 50% of records (±1 record).

Atomicity: the whole build (split files, ``rejects.jsonl``, ``config.yaml``, ``images/`` and
``manifest.json``) is written into a staging folder next to the output
(``.rmkit-build-<name>.<random>``) and swapped in with one atomic exchange of the two folders
(``renameat2(RENAME_EXCHANGE)``); the previous build is then deleted. A kill at any point leaves
either the whole previous build or the whole new one under the output's name, never a mix;
leftover staging folders are removed by the next build. Readers check the split files against
``manifest.json`` (:func:`rmkit.data.manifest.verify_manifest`).

Safety: ``--output`` may not be, contain or lie inside an input (the build would overwrite or
re-read its own source), and may not hold files that a build did not write (the commit replaces
the whole folder). Hidden ``.rmkit*`` files in it (the lock, pipeline markers) are carried over.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import random
import shutil
from collections import Counter, defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson

from rmkit import __version__
from rmkit.data.config import BuildDataConfig, SourceConfig
from rmkit.data.images import (
    ImageError,
    ImageLimits,
    ImageStore,
    compact_row,
    materialize,
    record_image_refs,
)
from rmkit.data.readers import BadRow, describe_input, iter_rows
from rmkit.data.records import make_record, prompt_text, record_problem
from rmkit.data.sources import CONVERTERS, Pair, RowError, Skip
from rmkit.data.sources.base import EmptyAnswer
from rmkit.data.sources.text import HH_SUBSETS
from rmkit.data.staging import (  # noqa: F401  (check_output_vs_inputs: re-exported)
    STAGING_PREFIX,
    check_foreign,
    check_output_vs_inputs,
    clean_staging,
    commit_folder,
    link_or_copy,
    new_staging,
)
from rmkit.errors import DataError, RmkitError
from rmkit.utils import lock
from rmkit.utils.console import Progress
from rmkit.utils.io import (
    TMP_PREFIX,
    HashingWriter,
    atomic_open,
    clean_stale_tmp,
    dumps_line,
    file_sha256,
    write_json_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def _u64(*parts: Any) -> int:
    """A stable 64-bit hash of the parts (blake2b; independent of PYTHONHASHSEED)."""
    data = b"\x00".join(p if isinstance(p, bytes) else str(p).encode() for p in parts)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Builder:
    """One build run. Use :func:`build_data`."""

    def __init__(self, cfg: BuildDataConfig, out: Path):
        self.cfg, self.out = cfg, out
        self.seen: set[bytes] = set()
        self.ids: set[str] = set()  # every id given out so far (ids stay unique)
        self.decks: dict[tuple[str, int], list[int]] = {}
        self.rngs: dict[tuple[str, int], random.Random] = {}
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)
        self.task_counts: dict[str, Counter[str]] = defaultdict(Counter)
        self.dropped: Counter[str] = Counter()
        self.first: Counter[str] = Counter()
        self.pairs2: Counter[str] = Counter()
        self.rejected = 0
        self.inputs: list[dict[str, Any]] = []
        self.writers: dict[str, HashingWriter] = {}
        self.rejects: HashingWriter | None = None
        self._split_bounds = (cfg.splits.train, cfg.splits.train + cfg.splits.val)
        self._salt = cfg.splits.salt.encode() + b"\x00"
        self.validate = False
        self.store: ImageStore | None = None
        self.used_images: set[str] = set()
        self._compact = False  # image rows: summarise bytes/long strings in rejects.jsonl

    # -- errors and rejects ------------------------------------------------------------------
    def _reject(
        self, path: str, loc: int | None, field: str | None, reason: str, raw: Any = None
    ) -> None:
        self.rejected += 1
        row = {"file": path, "line": loc, "field": field, "reason": reason}
        if raw is not None:
            row["row"] = compact_row(raw) if self._compact else raw
        assert self.rejects is not None
        self.rejects.write(dumps_line(row))

    def _bad(
        self,
        path: str,
        loc: int,
        field: str | None,
        expected: str,
        raw: Any,
        null: bool = False,
        hint: str | None = None,
    ) -> None:
        reason = f"is null; expected {expected}" if null else f"expected {expected}"
        if self.cfg.on_error == "fail":
            hint = (hint + "; " if hint else "") + (
                "fix the row, or pass --on-error skip to list bad rows in rejects.jsonl and continue"
            )
            if null:  # "field 'x' is null; expected a string" (not "missing")
                err = DataError(path, loc, None, f"field '{field}' {reason}", hint=hint)
                err.field = field
                raise err
            raise DataError(path, loc, field, reason, hint=hint)
        self._reject(path, loc, field, reason, raw)

    def _bad_image(self, path: str, loc: int, err: ImageError, raw: Any) -> None:
        if self.cfg.on_error == "fail":
            hint = (
                err.hint + "; " if err.hint else ""
            ) + "--on-error skip lists bad rows in rejects.jsonl and continues"
            raise DataError(path, loc, err.field, err.message, hint=hint)
        self._reject(path, loc, err.field, err.message, raw)

    def _drop(self, path: str, loc: int, reason: str, field: str | None = None) -> None:
        """A well-formed row left out on purpose (filter, tie, duplicate): counted by reason."""
        self.dropped[reason.split(":")[0]] += 1
        self._reject(path, loc, field, reason)

    # -- record assembly ------------------------------------------------------------------------
    def _filter(self, pair: Pair) -> str | None:
        f = self.cfg.filters
        cands = pair.candidates
        if any(len(c.strip()) < f.min_candidate_chars for c in cands):
            return "short candidate"
        if f.drop_identical and len({c.strip() for c in cands}) < len(cands):
            return "identical candidates"
        if f.max_candidate_chars and any(len(c) > f.max_candidate_chars for c in cands):
            return "candidate too long"
        if f.max_prompt_chars and len(prompt_text(pair.prompt)) > f.max_prompt_chars:
            return "prompt too long"
        return None

    def _assemble(self, src: SourceConfig, pair: Pair) -> tuple[dict[str, Any], bytes] | str:
        reason = self._filter(pair)
        if reason:
            return reason
        name = src.name or src.format
        if pair.subset:
            name = f"{name}/{pair.subset}"
        content = orjson.dumps(
            [pair.task, pair.prompt, pair.images, pair.candidates, pair.label, pair.label_kind]
        )
        digest = hashlib.blake2b(content, digest_size=16).digest()
        if self.cfg.filters.dedup:
            if digest in self.seen:
                return "duplicate"
            self.seen.add(digest)
        rid = self._unique_id(
            f"{name}:{pair.key}" if pair.key else f"{name}:{digest.hex()[:16]}", "#"
        )
        rec = make_record(
            id=rid,
            source=name,
            task=pair.task,
            prompt=pair.prompt,
            candidates=list(pair.candidates),
            label=pair.label,
            images=pair.images,
            label_kind=pair.label_kind,
            meta=dict(pair.meta),
            cluster=pair.cluster,
        )
        if self.validate:  # built-in converters are checked by the test suite instead (speed)
            problem = record_problem(rec)
            if problem:
                return f"invalid record: {problem[0]}: expected {problem[1]}"
        return rec, digest

    def _unique_id(self, rid: str, sep: str) -> str:
        """``rid``, or ``rid{sep}2``, ``rid{sep}3``, ... : the first one no record has yet."""
        if rid in self.ids:
            k = 2
            while f"{rid}{sep}{k}" in self.ids:
                k += 1
            rid = f"{rid}{sep}{k}"
        self.ids.add(rid)
        return rid

    def _split_of(self, rec: dict[str, Any]) -> str:
        key = self._salt + prompt_text(rec["prompt"]).strip().encode()
        u = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64
        lo, hi = self._split_bounds
        return "train" if u < lo else ("val" if u < hi else "test")

    def _balance(self, rec: dict[str, Any], split: str) -> None:
        n = len(rec["candidates"])
        key = (split, n)
        rng = self.rngs.get(key)
        if rng is None:
            rng = self.rngs[key] = random.Random(f"{self.cfg.seed}:{split}:{n}")
        label = rec["label"]
        order = list(range(n))
        if label is None or not self.cfg.balance_positions:
            rng.shuffle(order)
        else:
            deck = self.decks.get(key)
            if not deck:
                deck = self.decks[key] = list(range(n))
                rng.shuffle(deck)
            target = deck.pop()
            if n == 2:
                order = [label, 1 - label] if target == 0 else [1 - label, label]
            else:
                others = [i for i in range(n) if i != label]
                rng.shuffle(others)
                order = others[:target] + [label] + others[target:]
        rec["candidates"] = [rec["candidates"][i] for i in order]
        rec["meta"]["original_order"] = order
        if label is not None:
            rec["label"] = order.index(label)
            if n == 2:
                self.pairs2[split] += 1
                self.first[split] += rec["label"] == 0

    def _emit(self, rec: dict[str, Any]) -> None:
        split = self._split_of(rec)
        self._balance(rec, split)
        self.writers[split].write(dumps_line(rec))
        if rec["task"] != "text":
            self.used_images.update(record_image_refs(rec))
        self.counts[rec["source"]][split] += 1
        self.task_counts[rec["task"]][split] += 1

    def _emit_weighted(self, src: SourceConfig, rec: dict[str, Any]) -> None:
        w = src.weight
        if w == 1.0:
            self._emit(rec)
            return
        copies = int(w) + (1 if _u64(self.cfg.seed, "w", rec["id"]) / 2**64 < w - int(w) else 0)
        for j in range(copies):
            r = (
                rec
                if j == 0
                else {
                    **rec,
                    "id": self._unique_id(f"{rec['id']}#r{j + 1}", "#"),
                    "meta": dict(rec["meta"]),
                }
            )
            if j:
                r["candidates"] = list(rec["candidates"])
            self._emit(r)

    def _convert(
        self, src: SourceConfig, fn: Any, opts: dict, fpath: str, loc: int, row: Any, is_image: bool
    ) -> list[dict[str, Any]]:
        """The records one input row yields; bad rows are reported, dropped pairs counted."""
        if isinstance(row, BadRow):
            self._bad(fpath, loc, None, row.expected, row.raw)
            return []
        try:
            pairs = fn(row, opts)
        except RowError as e:
            self._bad(fpath, loc, e.field, e.expected, row, null=getattr(e, "null", False))
            return []
        except EmptyAnswer as e:
            if self.cfg.filters.empty_answer == "error":
                self._bad(
                    fpath,
                    loc,
                    e.field,
                    "a non-empty answer",
                    row,
                    hint="filters.empty_answer=drop (the default) drops such rows as 'empty_answer'",
                )
            else:
                self._drop(fpath, loc, e.reason, e.field)
            return []
        except Skip as e:
            self._drop(fpath, loc, e.reason)
            return []
        if is_image:
            try:
                for pair in pairs:
                    materialize(pair, self.store)
            except ImageError as e:
                self._bad_image(fpath, loc, e, row)
                return []
        out = []
        for pair in pairs:
            got = self._assemble(src, pair)
            if isinstance(got, str):
                if got.startswith("invalid record"):
                    self._bad(fpath, loc, None, got, row)
                else:
                    self._drop(fpath, loc, got)
                continue
            out.append(got[0])
        return out

    # -- sources ----------------------------------------------------------------------------------
    def run_source(self, src: SourceConfig) -> None:
        spec = CONVERTERS[src.format]
        self.validate = not spec.builtin
        is_image = self._compact = spec.task != "text"
        if is_image and self.store is None:
            im = self.cfg.images
            limits = ImageLimits(
                im.max_file_bytes, im.max_side, im.max_pixels, im.min_side, tuple(im.formats)
            )
            self.store = ImageStore(self.out, limits)
        heap: list[tuple[int, int, dict[str, Any]]] = []
        seq = 0
        for path in src.inputs:
            if is_image:
                assert self.store is not None
                self.store.set_roots(self.cfg.images.roots or _default_roots(path))
            opts = {**spec.options, **src.options}
            info = {
                "source": src.name or src.format,
                "path": path,
                "kind": describe_input(path),
                "rows": 0,
            }
            if Path(path).is_file():
                info["sha256"] = file_sha256(Path(path))
            self.inputs.append(info)
            with Progress(f"{src.format} {Path(path).name}", unit="rows") as prog:
                current = None
                for fpath, loc, row in iter_rows(path, split=src.split):
                    if (
                        fpath is not current
                        and src.format == "hh-rlhf"
                        and not src.options.get("subset")
                    ):
                        current = fpath
                        opts["subset"] = next(
                            (s for s in HH_SUBSETS if s in Path(fpath).as_posix()), None
                        )
                    info["rows"] += 1
                    if info["rows"] % 2000 == 0:
                        prog.update(2000, kept=sum(w.n for w in self.writers.values()))
                    for rec in self._convert(src, spec.fn, opts, fpath, loc, row, is_image):
                        if src.cap is None:
                            self._emit_weighted(src, rec)
                            continue
                        seq += 1
                        item = (-_u64(self.cfg.seed, "cap", rec["id"]), seq, rec)
                        if len(heap) < src.cap:
                            heapq.heappush(heap, item)
                        elif item[0] > heap[0][0]:
                            self.dropped["over cap"] += 1
                            heapq.heapreplace(heap, item)
                        else:
                            self.dropped["over cap"] += 1
                prog.update(info["rows"] % 2000, kept=sum(w.n for w in self.writers.values()))
        for _, _, rec in sorted(heap, key=lambda t: t[1]):
            self._emit_weighted(src, rec)

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(self.out)
        with ExitStack() as stack:
            for split in SPLITS:
                self.writers[split] = HashingWriter(
                    stack.enter_context(atomic_open(self.out / f"{split}.jsonl", "wb"))
                )
            self.rejects = HashingWriter(
                stack.enter_context(atomic_open(self.out / "rejects.jsonl", "wb"))
            )
            for src in self.cfg.sources:
                self.run_source(src)
        manifest = self._manifest()
        if self.store is None and (self.out / "images").is_dir():  # images of an earlier build
            ImageStore(self.out).prune(set())
        if self.store is not None:
            kept, size, removed = self.store.prune(self.used_images)
            st = self.store.stats
            manifest["images"] = {"folder": "images", "files": kept, "bytes": size}
            log.info(
                "images: %d file(s) kept (%d new, %d checked, %d reused, %d unused removed)",
                kept,
                st.written,
                st.checked,
                st.reused,
                removed,
            )
        return manifest

    def _manifest(self) -> dict[str, Any]:
        total = {s: self.writers[s].n for s in SPLITS}
        first = {s: (self.first[s] / self.pairs2[s] if self.pairs2[s] else None) for s in SPLITS}
        n2 = sum(self.pairs2.values())
        return {
            "rmkit_version": __version__,
            "seed": self.cfg.seed,
            "counts": {
                "total": total,
                "by_source": {k: {s: v[s] for s in SPLITS} for k, v in sorted(self.counts.items())},
                "by_task": {
                    k: {s: v[s] for s in SPLITS} for k, v in sorted(self.task_counts.items())
                },
                "dropped": dict(sorted(self.dropped.items())),
                "rejected_rows": self.rejected,
            },
            "preferred_first_fraction": {
                "all": (sum(self.first.values()) / n2) if n2 else None,
                **first,
            },
            "inputs": self.inputs,
            "outputs": {
                f"{s}.jsonl": {
                    "records": self.writers[s].n,
                    "bytes": self.writers[s].bytes,
                    "sha256": self.writers[s].sha.hexdigest(),
                }
                for s in SPLITS
            }
            | {
                "rejects.jsonl": {
                    "records": self.rejects.n,
                    "bytes": self.rejects.bytes,
                    "sha256": self.rejects.sha.hexdigest(),
                }
            },
            "config": self.cfg.model_dump(mode="json", exclude={"output"}),
        }


def _default_roots(path: str) -> list[Path]:
    """Image paths in an input may point inside the input's own folder unless roots are given."""
    p = Path(path)
    if p.is_dir():
        return [p]
    return [p.parent] if p.exists() else []


BUILD_FILES = frozenset(
    {*(f"{s}.jsonl" for s in SPLITS), "rejects.jsonl", "manifest.json", "config.yaml", "images"}
)


def build_data(cfg: BuildDataConfig, output: str | Path | None = None) -> dict[str, Any]:
    """Run a build; returns the manifest (also written to ``OUTPUT/manifest.json``)."""
    out = Path(output or cfg.output or "")
    if not str(out):
        raise RmkitError(
            "no output folder given", hint="pass --output DIR or set output: in the recipe"
        )
    if out.exists() and not out.is_dir():
        raise RmkitError(f"output {out} exists and is not a folder")
    check_output_vs_inputs(out, [p for src in cfg.sources for p in src.inputs])
    _check_foreign(out)
    # one build writes a folder at a time (SECURITY-REVIEW M6)
    with lock.lock_output(out, what="build-data output"):
        return _build_locked(cfg, out)


def _check_foreign(out: Path) -> None:
    """The commit replaces the whole folder: refuse one holding files a build did not write."""
    check_foreign(out, BUILD_FILES, "rmkit build-data")


def _prepare_staging(cfg: BuildDataConfig, out: Path) -> Path:
    stage = new_staging(out)
    needs_images = any(CONVERTERS[s.format].task != "text" for s in cfg.sources)
    old_images = out / "images"
    if needs_images and old_images.is_dir():  # reuse stored images (hard links, no copies)
        for sub in os.scandir(old_images):
            if not sub.is_dir(follow_symlinks=False):
                continue
            (stage / "images" / sub.name).mkdir(parents=True, exist_ok=True)
            for f in os.scandir(sub.path):
                if f.is_file(follow_symlinks=False) and not f.name.startswith(TMP_PREFIX):
                    link_or_copy(f.path, stage / "images" / sub.name / f.name)
    return stage


def _build_locked(cfg: BuildDataConfig, out: Path) -> dict[str, Any]:
    shown, out = out, out.resolve()  # the real folder (a symlinked --output keeps its link)
    clean_staging(out.parent, out.name)
    clean_stale_tmp(out)
    stage = _prepare_staging(cfg, out)
    try:
        manifest = Builder(cfg, stage).run()
        import yaml

        write_text_atomic(
            stage / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        )
        write_json_atomic(stage / "manifest.json", manifest)
        commit_folder(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info("wrote %s: %s", shown, manifest["counts"]["total"])
    return manifest
