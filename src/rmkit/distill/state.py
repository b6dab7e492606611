"""The resumable output folder of ``rmkit distill``: append-only outputs and a done-log.

Layout of ``DIR``::

    traces.jsonl        kept SFT trace records            (appended per finished record)
    rejects.jsonl       rejected samples, with reasons    (appended per finished record)
    rl.jsonl            rejection sampling: the RL set    (appended per finished record)
    hard.jsonl          with ``hard``: the hard subset    (appended per finished record)
    summary.json        counts, calls, tokens, cost       (written atomically at the end)
    cache/              the generation backend's request cache (completions.jsonl; attempt k
                        of ``sampling.attempts`` > 1 in cache/attempt-k/)
    state/run.json      the settings fingerprint of the run in this folder
    state/done.jsonl    one line per finished record, written *last*
    state/usage.jsonl   backend usage (calls, tokens): for an API teacher a line per answered
                        request, written before its answer enters the cache, so the counts stay
                        exact across SIGKILL (an answer in the cache is always counted)

Only one process opens the folder at a time: :class:`RunState` holds the lock of
:mod:`rmkit.utils.lock` (``DIR/.rmkit.lock``) while it is open, so a second run on the same
folder stops at once naming the owner's pid (SECURITY-REVIEW M6).

Crash consistency. One process appends; for each finished record it writes the record's lines
to the output files, flushes them, and only then appends the record's done line, which holds
the byte size of every output file *after* that record. So whatever moment a run is killed at
(even SIGKILL), the last complete done line describes a consistent prefix of every output file:
on restart a torn last done line is cut off and every output file is truncated to the sizes the
last done line recorded, which removes the lines of records that were not finished. Those
records are processed again; their completed API calls come from the request cache, so none is
paid twice.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson

from rmkit.errors import RmkitError
from rmkit.utils import lock
from rmkit.utils.io import clean_stale_tmp, dumps_line, read_json, write_json_atomic

log = logging.getLogger(__name__)

STATE_DIR = "state"
CACHE_DIR = "cache"
RUN_FILE = "run.json"
DONE_FILE = "done.jsonl"
USAGE_FILE = "usage.jsonl"
SUMMARY_FILE = "summary.json"
OUTPUT_FILES = {
    "traces": "traces.jsonl",
    "rejects": "rejects.jsonl",
    "rl": "rl.jsonl",
    "hard": "hard.jsonl",
}


def read_log(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Complete lines of an append-only JSONL log and the byte size they span.

    Only the last line can be torn (one writer appends whole lines in order), so an unterminated
    tail is ignored; a bad line *before* it means the file was damaged otherwise and raises.
    """
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    rows = []
    for lineno, line in enumerate(data[:end].split(b"\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            raise RmkitError(
                f"{path}:{lineno}: damaged line in the run state",
                hint="restart the run with --restart (the request cache is kept)",
            ) from None
    return rows, end


def truncate_to(path: Path, size: int) -> int:
    """Cut ``path`` to ``size`` bytes (creating it when missing and ``size`` is 0).

    Returns the number of bytes removed. A file shorter than ``size`` cannot be repaired.
    """
    current = path.stat().st_size if path.exists() else 0
    if current < size:
        raise RmkitError(
            f"{path} is shorter ({current} bytes) than the run state records ({size} bytes)",
            hint="an output file was edited or removed; restart the run with --restart",
        )
    if current > size:
        with open(path, "r+b") as fh:
            fh.truncate(size)
    elif not path.exists():
        path.touch()
    return current - size


class RunState:
    """Open (and repair) a distill output folder; append finished records to it.

    ``fingerprint`` holds the settings that decide the outputs; a folder holding a run with
    other settings is refused unless ``restart`` (which deletes outputs and state, but keeps the
    request cache, whose keys already cover every setting that matters to a request).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        fingerprint: dict[str, Any],
        outputs: tuple[str, ...] = ("traces", "rejects"),
        restart: bool = False,
    ):
        self.folder = Path(folder)
        self.outputs = outputs
        self.state_dir = self.folder / STATE_DIR
        self.done: dict[str, dict[str, Any]] = {}
        self.counts = {"kept": 0, "rejected": 0}  # running totals over the done-log
        self.tokens: dict[str, int] = {}  # running totals of the done lines' token usage
        self._usage: dict[str, dict[str, Any]] = {}  # running usage totals per "who"
        self._usage_lock = threading.Lock()
        self.repaired_bytes = 0
        self._files: dict[str, IO[bytes]] = {}
        # One process appends (see the module docstring): enforced by a lock on the folder,
        # taken before anything in it is read, repaired or cleared.
        self._lock = lock.acquire(self.folder, what="distill output")
        try:
            if restart:
                self._clear()
            self.state_dir.mkdir(parents=True, exist_ok=True)
            clean_stale_tmp(self.folder)
            self._check_fingerprint(fingerprint)
            self._recover()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- opening

    def _clear(self) -> None:
        for name in [*OUTPUT_FILES.values(), SUMMARY_FILE]:
            (self.folder / name).unlink(missing_ok=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        log.info("%s: outputs and state cleared (request cache kept)", self.folder)

    def _check_fingerprint(self, fingerprint: dict[str, Any]) -> None:
        path = self.state_dir / RUN_FILE
        if path.exists():
            old = read_json(path).get("fingerprint", {})
            changed = sorted(
                k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k)
            )
            if changed:
                first = changed[0]
                raise RmkitError(
                    f"{self.folder} holds a distill run with other settings ({first}: "
                    f"{old.get(first)!r} there, {fingerprint.get(first)!r} now"
                    + (f"; also {', '.join(changed[1:])}" if len(changed) > 1 else "")
                    + ")",
                    hint="rerun with the same settings to resume, use another --output, or add "
                    "--restart to start over (the request cache is kept)",
                )
            return
        has_outputs = any((self.folder / OUTPUT_FILES[n]).exists() for n in OUTPUT_FILES)
        if has_outputs:
            raise RmkitError(
                f"{self.folder} has distill outputs but no run state",
                hint="use another --output, or add --restart to start over",
            )
        write_json_atomic(path, {"fingerprint": fingerprint, "created": round(time.time(), 3)})

    def _recover(self) -> None:
        done_path = self.state_dir / DONE_FILE
        rows, size = read_log(done_path)
        self.repaired_bytes += truncate_to(done_path, size)
        offsets = rows[-1]["offsets"] if rows else {}
        for row in rows:
            self._count(row)
        for name in self.outputs:
            self.repaired_bytes += truncate_to(
                self.folder / OUTPUT_FILES[name], offsets.get(name, 0)
            )
        usage_path = self.state_dir / USAGE_FILE
        usage_rows, usage_size = read_log(usage_path)
        truncate_to(usage_path, usage_size)
        for row in usage_rows:
            self._add(row)
        if self.repaired_bytes:
            log.warning(
                "%s: removed %d byte(s) of unfinished output left by an interrupted run",
                self.folder,
                self.repaired_bytes,
            )
        if self.done:
            log.info("%s: resuming, %d record(s) already done", self.folder, len(self.done))
        for name in self.outputs:
            self._files[name] = open(self.folder / OUTPUT_FILES[name], "ab")  # noqa: SIM115
        self._files["_done"] = open(done_path, "ab")  # noqa: SIM115
        self._files["_usage"] = open(usage_path, "ab")  # noqa: SIM115

    # ----------------------------------------------------------------- writing

    def commit(self, record_id: str, lines: dict[str, list[dict]], entry: dict[str, Any]) -> None:
        """Append a finished record: its output lines first (flushed), then its done line."""
        if record_id in self.done:
            raise RmkitError(f"record {record_id} is already done in {self.folder}")
        unknown = set(lines) - set(self.outputs)
        if unknown:
            raise RmkitError(f"no output file {sorted(unknown)} in this mode")
        for name, rows in lines.items():
            fh = self._files[name]
            for row in rows:
                fh.write(dumps_line(row))
            fh.flush()
        offsets = {name: self._files[name].tell() for name in self.outputs}
        row = {"id": record_id, **entry, "offsets": offsets}
        fh = self._files["_done"]
        fh.write(dumps_line(row))
        fh.flush()
        self._count(row)

    def _count(self, row: dict[str, Any]) -> None:
        self.done[row["id"]] = row
        self.counts["kept"] += int(row.get("kept", 0))
        self.counts["rejected"] += int(row.get("rejected", 0))
        for key, value in (row.get("tokens") or {}).items():
            self.tokens[key] = self.tokens.get(key, 0) + int(value)

    def add_usage(self, delta: dict[str, Any]) -> None:
        """Append a usage delta (calls, tokens) to the usage log (thread-safe: API backends
        log each answered request from their own thread, before its answer is cached)."""
        with self._usage_lock:
            fh = self._files["_usage"]
            fh.write(dumps_line(delta))
            fh.flush()
            self._add(delta)

    def _add(self, row: dict[str, Any]) -> None:
        """Add one usage row to the running totals of its ``who`` (numbers summed, ``failures``
        dicts merged)."""
        total = self._usage.setdefault(row.get("who", "teacher"), {})
        for key, value in row.items():
            if isinstance(value, dict):
                sub = total.setdefault(key, {})
                for k, v in value.items():
                    sub[k] = sub.get(k, 0) + v
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value

    def sync(self) -> None:
        """fsync every open file (power-loss durability at chunk boundaries)."""
        for fh in self._files.values():
            os.fsync(fh.fileno())

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files = {}
        lock.release(self._lock)
        self._lock = None

    def __enter__(self) -> RunState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- reading

    def usage_total(self, who: str = "teacher") -> dict[str, Any]:
        """Usage summed over every row of ``who`` in the usage log (a copy)."""
        with self._usage_lock:
            total = self._usage.get(who, {})
            return {k: dict(v) if isinstance(v, dict) else v for k, v in total.items()}

    def path(self, name: str) -> Path:
        return self.folder / OUTPUT_FILES[name]

    @property
    def cache_dir(self) -> Path:
        return self.folder / CACHE_DIR
