"""Atomic file output and fast JSONL I/O.

Everything rmkit writes goes to a temporary name in the destination folder and is renamed into
place only when complete, so an interrupted run (SIGINT, SIGKILL, power loss) never leaves a
partial file under a final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

TMP_PREFIX = ".rmkit-tmp-"
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark at the start of a file is accepted and ignored


def dumps_line(obj: Any) -> bytes:
    """One JSON object as a UTF-8 line (keys in insertion order, no ASCII escaping)."""
    return orjson.dumps(obj) + b"\n"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; rename it to ``path`` on success, delete on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the usual permissions
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: bool = True) -> None:
    opts = orjson.OPT_INDENT_2 if indent else 0
    with atomic_open(path, "wb") as fh:
        fh.write(orjson.dumps(obj, option=opts) + b"\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    n = 0
    with atomic_open(path, "wb") as fh:
        for row in rows:
            fh.write(dumps_line(row))
            n += 1
    return n


def read_json(path: str | os.PathLike) -> Any:
    from rmkit.errors import RmkitError

    try:
        return orjson.loads(Path(path).read_bytes().removeprefix(BOM))
    except FileNotFoundError:
        raise RmkitError(f"{path}: file not found") from None
    except orjson.JSONDecodeError as e:
        raise RmkitError(f"{path}: not valid JSON ({e})") from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)`` for each non-blank line; bad JSON raises DataError."""
    from rmkit.errors import DataError

    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if lineno == 1 and line.startswith(BOM):
                line = line[len(BOM) :]
            if not line.strip():
                continue
            try:
                yield lineno, orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise DataError(str(path), lineno, None, f"invalid JSON ({e})") from None


def append_jsonl(fh: IO[bytes], obj: Any) -> None:
    """Append one line and flush (for resumable logs such as metrics and caches)."""
    fh.write(dumps_line(obj))
    fh.flush()


def clean_stale_tmp(folder: str | os.PathLike) -> int:
    """Remove temporary files a killed run left behind in ``folder``; return how many."""
    n = 0
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(TMP_PREFIX + "*"):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    return n


class HashingWriter:
    """Writes lines to ``fh`` and keeps their running SHA-256 (``sha``), count (``n``) and
    size in bytes (``bytes``)."""

    def __init__(self, fh: IO[bytes]):
        self.fh, self.sha, self.n, self.bytes = fh, hashlib.sha256(), 0, 0

    def write(self, line: bytes) -> None:
        self.fh.write(line)
        self.sha.update(line)
        self.n += 1
        self.bytes += len(line)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_RENAME_EXCHANGE = 2  # linux/fs.h


def exchange_dirs(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Atomically swap two existing folders (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False, having changed nothing, where the OS or file system cannot do it.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    import errno

    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (renames into it) to disk, where the OS allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
