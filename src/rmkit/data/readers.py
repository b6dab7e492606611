"""Streaming row readers for every input kind ``build-data`` accepts.

Each reader yields ``(location, row)`` where ``location`` is a 1-based line number (JSONL, CSV)
or row number (JSON, Parquet, Arrow) so errors can name the exact place. Rows are dicts.
Inputs: ``.jsonl``/``.jsonl.gz``, ``.json`` (a list, or an object holding one list), ``.parquet``,
``.csv``/``.tsv``, a ``datasets.save_to_disk`` folder, a folder of parquet/arrow/jsonl files
(a hub download), or a hub id ``owner/name[:config][@split]`` when online.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from rmkit.errors import DataError, RmkitError

Row = dict[str, Any]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?::[\w.-]+)?(?:@[\w.\[\]:%-]+)?$")
PARQUET_BATCH = 2048
BATCH_BYTES = 4 << 20  # aim for at most ~4 MB of (uncompressed) rows per Parquet batch
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark (Windows tools write one): accepted and ignored


class BadRow(Exception):
    """A row that is not a JSON object / not decodable; carries the raw text."""

    def __init__(self, expected: str, raw: str):
        super().__init__(expected)
        self.expected = expected
        self.raw = raw


def describe_input(path: str) -> str:
    p = Path(path)
    if p.is_dir():
        return "folder"
    if p.exists():
        return "file"  # regular files, and pipes/devices such as /dev/stdin
    if HUB_ID.match(path):
        return "hub"
    return "missing"


def iter_rows(path: str, *, split: str | None = None) -> Iterator[tuple[str, int, Row | BadRow]]:
    """Yield ``(file, location, row)``; malformed rows are yielded as :class:`BadRow` (not raised).

    ``file`` is the actual file a row came from (inside a folder input), so errors can name it.
    """
    kind = describe_input(path)
    if kind == "missing":
        raise RmkitError(
            f"input not found: {path}",
            hint="give a local file/folder, or a hub id owner/name when online",
        )
    if kind == "hub":
        for loc, row in _iter_hub(path):
            yield path, loc, row
        return
    p = Path(path)
    if p.is_dir():
        yield from _iter_folder(p, split)
        return
    for loc, row in _iter_file(p):
        yield path, loc, row


def _iter_file(p: Path) -> Iterator[tuple[int, Row | BadRow]]:
    name = p.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        yield from _iter_jsonl(p)
    elif name.endswith(".json"):
        yield from _iter_json(p)
    elif name.endswith(".parquet"):
        yield from _iter_parquet(p)
    elif name.endswith((".csv", ".tsv")):
        yield from _iter_csv(p, "\t" if name.endswith(".tsv") else ",")
    elif name.endswith(".arrow"):
        yield from _iter_arrow(p)
    else:
        raise RmkitError(
            f"{p}: unknown input type (suffix '{p.suffix}')",
            hint="supported: .jsonl, .jsonl.gz, .json, .parquet, .csv, .tsv, .arrow, a save_to_disk folder",
        )


def _iter_jsonl(p: Path) -> Iterator[tuple[int, Row | BadRow]]:
    opener = gzip.open if p.name.endswith(".gz") else open
    with opener(p, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if lineno == 1 and line.startswith(BOM):
                line = line[len(BOM) :]
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                yield (
                    lineno,
                    BadRow(f"a valid JSON object ({e})", line[:2000].decode("utf-8", "replace")),
                )
                continue
            if not isinstance(obj, dict):
                yield (
                    lineno,
                    BadRow(
                        f"a JSON object, got {type(obj).__name__}",
                        line[:2000].decode("utf-8", "replace"),
                    ),
                )
                continue
            yield lineno, obj


def _iter_json(p: Path) -> Iterator[tuple[int, Row | BadRow]]:
    try:
        data = orjson.loads(p.read_bytes().removeprefix(BOM))
    except orjson.JSONDecodeError as e:
        raise DataError(
            str(p),
            None,
            None,
            f"not valid JSON ({e})",
            hint="for one object per line use a .jsonl file",
        ) from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(
                str(p),
                None,
                None,
                "expected a JSON list of rows (or an object holding exactly one list)",
            )
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(str(p), None, None, "expected a JSON list of rows")
    for i, obj in enumerate(data, 1):
        if isinstance(obj, dict):
            yield i, obj
        else:
            yield i, BadRow(f"a JSON object, got {type(obj).__name__}", repr(obj)[:2000])


def _iter_parquet(p: Path) -> Iterator[tuple[int, Row | BadRow]]:
    import pyarrow.parquet as pq

    try:
        # Buffered page reads instead of pre-buffering: pre-buffering keeps whole row groups (in
        # practice most of the file) in memory; streaming costs no measurable speed.
        pf = pq.ParquetFile(p, pre_buffer=False, buffer_size=1 << 20)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(str(p), None, None, f"not a readable Parquet file ({e})") from None
    rows = pf.metadata.num_rows
    size = sum(pf.metadata.row_group(k).total_byte_size for k in range(pf.metadata.num_row_groups))
    batch_size = PARQUET_BATCH
    if rows and size / rows > BATCH_BYTES / PARQUET_BATCH:  # wide rows (images): smaller batches
        batch_size = max(1, int(BATCH_BYTES * rows / size))
    i = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        for row in batch.to_pylist():
            i += 1
            yield i, row


def _iter_arrow(p: Path) -> Iterator[tuple[int, Row | BadRow]]:
    import pyarrow as pa

    i = 0
    with pa.memory_map(str(p)) as source:
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(k) for k in range(reader.num_record_batches))
        else:
            batches = iter(reader)
        for batch in batches:
            for row in batch.to_pylist():
                i += 1
                yield i, row


def _maybe_json(value: str) -> Any:
    s = value.strip()
    if s[:1] in ("[", "{"):
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError:
            return value
    return value


def _iter_csv(p: Path, delimiter: str) -> Iterator[tuple[int, Row | BadRow]]:
    csv.field_size_limit(min(2**31 - 1, 1 << 30))
    with open(p, newline="", encoding="utf-8-sig") as fh:  # -sig: a leading BOM is dropped
        reader = csv.DictReader(fh, delimiter=delimiter)
        for row in reader:
            lineno = reader.line_num
            if None in row:
                yield (
                    lineno,
                    BadRow(
                        "as many cells as header columns",
                        delimiter.join(map(str, row.get(None) or [])),
                    ),
                )
                continue
            yield lineno, {k: _maybe_json(v) if isinstance(v, str) else v for k, v in row.items()}


def _iter_folder(p: Path, split: str | None) -> Iterator[tuple[str, int, Row | BadRow]]:
    if (
        (p / "dataset_info.json").exists()
        or (p / "dataset_dict.json").exists()
        or (p / "state.json").exists()
    ):
        for loc, row in _iter_saved_dataset(p, split):
            yield str(p), loc, row
        return
    files = sorted(
        f
        for f in p.rglob("*")
        if f.is_file()
        and f.name.lower().endswith((".parquet", ".jsonl", ".jsonl.gz", ".json", ".arrow"))
        and not f.name.startswith(".")
        and f.name not in ("dataset_info.json", "state.json", "manifest.json")
    )
    if split:
        files = [f for f in files if split in f.relative_to(p).as_posix()]
    if not files:
        raise RmkitError(
            f"{p}: no .parquet/.jsonl/.json/.arrow data files found"
            + (f" for split '{split}'" if split else "")
        )
    for f in files:
        for loc, row in _iter_file(f):
            yield str(f), loc, row


def _iter_saved_dataset(p: Path, split: str | None) -> Iterator[tuple[int, Row | BadRow]]:
    import datasets

    ds = datasets.load_from_disk(str(p))
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise RmkitError(
                    f"{p}: a DatasetDict with splits {list(ds)}",
                    hint="choose one with `split:` in the source or '@split' after the path",
                )
            split = next(iter(ds))
        if split not in ds:
            raise RmkitError(f"{p}: no split '{split}' (have {', '.join(ds)})")
        ds = ds[split]
    if "Image(" in repr(
        ds.features
    ):  # keep encoded image bytes ({bytes, path}) instead of PIL images
        i = 0
        for table in ds.with_format("arrow").iter(batch_size=64):
            for row in table.to_pylist():
                i += 1
                yield i, row
        return
    for i, row in enumerate(ds, 1):
        yield i, row


def _iter_hub(spec: str) -> Iterator[tuple[int, Row | BadRow]]:
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
        "HF_DATASETS_OFFLINE", ""
    ) not in ("", "0"):
        raise RmkitError(
            f"'{spec}' looks like a hub dataset id, but the hub is disabled (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE)",
            hint="download the dataset elsewhere and pass the local folder or file",
        )
    import datasets

    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
        if hasattr(ds, "decode"):
            ds = ds.decode(False)  # image columns stay encoded bytes (no effect on text columns)
        it = iter(ds)
        first = next(it, None)
    except Exception as e:  # network errors come in many types
        raise RmkitError(
            f"could not load '{spec}' from the Hugging Face hub ({type(e).__name__}: {str(e)[:200]})",
            hint="are you offline? download the dataset and pass the local folder or file",
        ) from None
    if first is None:
        return
    yield 1, first
    yield from enumerate(it, 2)
