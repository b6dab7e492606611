"""Reading benchmarks in their native local layouts, and turning their images into files.

A benchmark arrives as a hub download folder (parquet or arrow files, possibly under ``data/``
and split or config subfolders, images as ``{bytes, path}`` structs) or as the official JSON /
JSONL file plus an images folder. :func:`data_files` finds the files of one split,
:func:`iter_table_rows` streams their rows, and :class:`ImageStore` gives every image a path:
bytes are written once, named by their content hash, into the run's cache folder; path strings
are resolved against the data folder (or ``image_root``) and must stay inside those roots (the
build-data rule, :func:`rmkit.data.images.resolve_in_roots`).
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmkit.errors import DataError, RmkitError
from rmkit.utils.io import atomic_open

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json", ".jsonl.gz")
META_FILES = {
    "dataset_info.json",
    "state.json",
    "dataset_dict.json",
    "manifest.json",
    "config.json",
}
KNOWN_SPLITS = ("train", "test", "test_v1", "validation", "valid", "val", "dev", "filtered")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".flv")
_MAGIC = (
    (b"\x89PNG", ".png"),
    (b"\xff\xd8", ".jpg"),
    (b"GIF8", ".gif"),
    (b"BM", ".bmp"),
)


@dataclass
class LoadContext:
    """Where a loader reads from and writes image files to."""

    data: Path
    cache_dir: Path
    split: str | None = None
    subset: str | None = None
    image_root: Path | None = None
    exclude: Path | None = None  # the run's output folder, when it lies inside the data folder

    def images(self, base: Path | None = None) -> ImageStore:
        """An :class:`ImageStore` resolving relative paths against ``base`` (default: data)."""
        base = base or (self.data if self.data.is_dir() else self.data.parent)
        roots = [self.image_root] if self.image_root else []
        roots += [base, base / "images", base.parent]
        return ImageStore(self.cache_dir, roots)

    def record_images(self, folder: Path) -> ImageStore:
        """The :class:`ImageStore` for unified records in ``folder``: paths stay inside
        ``image_root`` (when given) or the records' own folder, as in build-data."""
        roots = [self.image_root] if self.image_root else []
        return ImageStore(self.cache_dir, roots + [folder])


def _is_data_file(p: Path) -> bool:
    name = p.name.lower()
    return (
        p.is_file()
        and name.endswith(DATA_SUFFIXES)
        and not name.startswith(".")
        and name not in META_FILES
    )


def _split_tokens(rel: Path) -> set[str]:
    """Split names a file path carries: folder names and ``-``-separated name parts."""
    tokens = set(rel.parts[:-1])
    stem = rel.name.split(".")[0]
    tokens.update(stem.split("-"))
    tokens.add(stem)
    return tokens


def data_files(path: Path, split: str | None, exclude: Path | None = None) -> list[Path]:
    """The data files of ``split`` under ``path`` (a file is returned as is), leaving out
    anything under ``exclude``.

    A folder whose files carry no split names at all is taken as one split. If files carry
    split names and none is ``split``, the error lists the splits that exist.
    """
    if not path.exists():
        raise RmkitError(
            f"benchmark data not found: {path}",
            hint="pass the downloaded folder or file with --data",
        )
    if path.is_file():
        return [path]
    skip = exclude.resolve() if exclude is not None else None
    files = sorted(
        p
        for p in path.rglob("*")
        if _is_data_file(p) and not (skip and p.resolve().is_relative_to(skip))
    )
    if not files:
        raise RmkitError(
            f"{path}: no .parquet/.arrow/.jsonl/.json data files found",
            hint="point --data at the downloaded benchmark folder or its JSON/JSONL file",
        )
    if split is None:
        return files
    tokens = {f: _split_tokens(f.relative_to(path)) for f in files}
    chosen = [f for f in files if split in tokens[f]]
    if chosen:
        return chosen
    present = sorted({t for ts in tokens.values() for t in ts if t in KNOWN_SPLITS})
    if not present:
        return files
    raise RmkitError(
        f"{path}: no files for split '{split}' (splits found: {', '.join(present)})",
        hint="choose one with --split",
    )


def iter_table_rows(files: list[Path]) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """Yield ``(file, row_number, row)`` for every row of every file (1-based rows / lines)."""
    for f in files:
        name = f.name.lower()
        if name.endswith(".parquet"):
            rows = _parquet_rows(f)
        elif name.endswith(".arrow"):
            rows = _arrow_rows(f)
        elif name.endswith((".jsonl", ".jsonl.gz")):
            rows = _jsonl_rows(f)
        else:
            rows = _json_rows(f)
        for loc, row in rows:
            if not isinstance(row, dict):
                raise DataError(
                    str(f), loc, None, f"a JSON object per row, got {type(row).__name__}"
                )
            yield f, loc, row


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(str(path), None, None, f"a readable Parquet file ({e})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=256):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _arrow_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Rows of an Arrow IPC file (``datasets`` writes the stream format; the file format too)."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_stream(source)
            batches = list(reader)
        except pa.ArrowInvalid:
            source.seek(0)
            freader = pa.ipc.open_file(source)
            batches = [freader.get_batch(k) for k in range(freader.num_record_batches)]
    n = 0
    for batch in batches:
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import gzip

    import orjson

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise DataError(str(path), lineno, None, f"valid JSON ({e})") from None


def _json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """A JSON list of rows, or an object holding exactly one list of rows."""
    import orjson

    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise DataError(
            str(path), None, None, f"valid JSON ({e})", hint="for one object per line use .jsonl"
        ) from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(
                str(path), None, None, "a JSON list of rows (or an object holding one list)"
            )
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(str(path), None, None, "a JSON list of rows")
    yield from enumerate(data, 1)


def require(
    row: dict[str, Any], key: str, where: tuple[Path, int], kind: type | tuple = object
) -> Any:
    """``row[key]`` checked for presence and type; a DataError names file, row and field."""
    if key not in row or row[key] is None:
        raise DataError(
            str(where[0]), where[1], key, "a value (the field is missing)", hint=_cols_hint(row)
        )
    value = row[key]
    if kind is not object and not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(str(where[0]), where[1], key, f"a {names}, got {type(value).__name__}")
    return value


def _cols_hint(row: dict[str, Any]) -> str:
    return "columns in this row: " + ", ".join(sorted(map(str, row)))[:300]


def image_suffix(data: bytes) -> str | None:
    """The file suffix of encoded image bytes (None when the format is not recognised)."""
    for magic, suffix in _MAGIC:
        if data.startswith(magic):
            return suffix
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return None


class ImageStore:
    """Gives every image reference an absolute path on disk.

    Encoded bytes are written to ``cache_dir/<sha256>.<ext>`` once (the same content is never
    written twice); path strings are resolved against ``roots`` in order.
    """

    def __init__(self, cache_dir: Path, roots: list[Path]):
        self.cache_dir = cache_dir
        self.roots = [r for r in roots if r is not None]
        self.n_written = 0

    def get(
        self, value: Any, where: tuple[Path, int], field: str, record: str | None = None
    ) -> str:
        if isinstance(value, dict):
            data = value.get("bytes")
            if data:
                return self.write_bytes(bytes(data), where, field)
            if value.get("path"):
                return self.resolve(str(value["path"]), where, field, record)
            raise DataError(
                str(where[0]), where[1], field, "an image struct with 'bytes' or 'path'"
            )
        if isinstance(value, (bytes, bytearray)):
            return self.write_bytes(bytes(value), where, field)
        if isinstance(value, str) and value:
            return self.resolve(value, where, field, record)
        if hasattr(value, "save"):  # a decoded PIL image (datasets with decoding on)
            buf = io.BytesIO()
            value.save(buf, format="PNG")
            return self.write_bytes(buf.getvalue(), where, field)
        raise DataError(
            str(where[0]),
            where[1],
            field,
            f"an image (bytes, path or struct), got {type(value).__name__}",
        )

    def write_bytes(self, data: bytes, where: tuple[Path, int], field: str) -> str:
        suffix = image_suffix(data) or self._pil_suffix(data, where, field)
        digest = hashlib.sha256(data).hexdigest()
        path = self.cache_dir / f"{digest}{suffix}"
        if not path.exists():
            with atomic_open(path, "wb") as fh:
                fh.write(data)
            self.n_written += 1
        return str(path.resolve())

    @staticmethod
    def _pil_suffix(data: bytes, where: tuple[Path, int], field: str) -> str:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                fmt = (im.format or "png").lower()
        except Exception:  # PIL raises many types for undecodable data
            raise DataError(str(where[0]), where[1], field, "decodable image bytes") from None
        return "." + ("jpg" if fmt == "jpeg" else fmt)

    def resolve(
        self, ref: str, where: tuple[Path, int], field: str, record: str | None = None
    ) -> str:
        """The real path of ``ref`` inside the roots: the rules of build-data
        (:func:`rmkit.data.images.resolve_in_roots`: no URL or ``file://``, absolute paths,
        ``..`` and symlinks only when their real path stays inside a root)."""
        from rmkit.data.images import ImageError, resolve_in_roots

        try:
            return str(resolve_in_roots(ref, self.roots, field))
        except ImageError as e:
            who = f"record {record!r}: " if record is not None else ""
            raise DataError(str(where[0]), where[1], field, who + e.message, hint=e.hint) from None


def is_video(ref: Any) -> bool:
    return isinstance(ref, str) and ref.lower().endswith(VIDEO_SUFFIXES)


def text_of(value: Any, where: tuple[Path, int], field: str) -> str:
    """A non-empty string field (candidates, prompts)."""
    if not isinstance(value, str) or not value.strip():
        raise DataError(str(where[0]), where[1], field, "a non-empty string")
    return value


def prefix_category(item_id: str) -> str:
    """Text before the first ``_`` or ``-`` of an id (the VL-RewardBench category key)."""
    cut = [i for i in (item_id.find("_"), item_id.find("-")) if i >= 0]
    return item_id[: min(cut)] if cut else item_id


def log_loaded(name: str, n_rows: int, n_items: int, skipped: dict[str, int]) -> None:
    extra = "; skipped " + ", ".join(f"{v} ({k})" for k, v in skipped.items()) if skipped else ""
    log.info("%s: read %d rows -> %d items%s", name, n_rows, n_items, extra)
