"""Exclusive locks on output folders: one rmkit run writes a folder at a time.

``lock_output(folder)`` takes an OS-level lock (``fcntl.flock``) on ``folder/.rmkit.lock`` and
writes the owner's pid, host, command and start time into it; a clean release removes the
file. A second run on the same folder
stops at once with an error naming the folder and the owner. The kernel releases the lock when
the owner exits, however it exits (SIGKILL, OOM kill, crash), so a lock left by a dead run is
never an obstacle: the file still holds the dead owner's record, which the next run reports as
"taken over" in a warning. Owner liveness is decided by the flock alone, not by the pid, so pid
reuse cannot make a stale lock look alive.

Locks are per folder and re-entrant per process (a nested acquisition of a folder this process
already holds is a no-op), so ``rmkit run`` can hold the run folder while its stages lock their
own stage folders, and a stage run in-process never deadlocks on itself. Under a multi-process
launch (accelerate, torchrun) only the main process locks.

Where ``fcntl`` does not exist (Windows) the lock is only advisory: the pid record is written and
checked against running processes.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rmkit.errors import RmkitError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_NAME = ".rmkit.lock"

# resolved folder -> (open file holding the flock, nesting depth)
_HELD: dict[Path, list[Any]] = {}


def _record(command: str | None) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command or " ".join(["rmkit", *sys.argv[1:]])[:500],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "started_unix": round(time.time(), 3),
    }


def _read_record(fh) -> dict[str, Any]:
    try:
        fh.seek(0)
        data = json.loads(fh.read() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "another process"
    parts = [f"pid {owner.get('pid', '?')}"]
    if owner.get("host"):
        parts.append(f"on {owner['host']}")
    if owner.get("started"):
        parts.append(f"since {owner['started']}")
    text = " ".join(parts)
    if owner.get("command"):
        text += f" ({owner['command']})"
    return text


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def is_main_process() -> bool:
    """False on the non-main processes of a multi-process launch (accelerate / torchrun)."""
    for var in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value not in (None, "", "0"):
            return False
    return True


def acquire(folder: str | os.PathLike, *, what: str = "output", command: str | None = None):
    """Lock ``folder`` (created if missing) for this process; raise :class:`RmkitError` when
    another live process holds it. Returns a handle for :func:`release`."""
    path = Path(folder).resolve()
    held = _HELD.get(path)
    if held is not None:
        held[1] += 1
        return path
    path.mkdir(parents=True, exist_ok=True)
    lock_path = path / LOCK_NAME
    while True:
        fh = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise _busy(path, what, _read_record(fh)) from None
                if not _same_file(fh, lock_path):
                    fh.close()  # its owner removed it as we opened it: lock the new file
                    continue
                previous = _read_record(fh)  # under the lock: a dead owner's record, or none
            else:  # pragma: no cover - Windows
                previous = _read_record(fh)
                if previous.get("pid") not in (None, os.getpid()) and _pid_alive(previous["pid"]):
                    raise _busy(path, what, previous)
            if previous.get("pid") is not None:
                log.warning(
                    "%s %s: taking over a stale lock left by %s (that run is no longer running)",
                    what,
                    path,
                    _describe(previous),
                )
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps(_record(command)) + "\n")
            fh.flush()
        except BaseException:
            fh.close()
            raise
        break
    _HELD[path] = [fh, 1]
    return path


def release(handle: Path | None) -> None:
    """Release one acquisition; the lock goes when the outermost one is released."""
    if handle is None:
        return
    held = _HELD.get(handle)
    if held is None:
        return
    held[1] -= 1
    if held[1] > 0:
        return
    del _HELD[handle]
    fh = held[0]
    try:
        # removed while still locked; an acquirer that opened it meanwhile sees that the path
        # no longer names its file and retries (see acquire), so no two runs ever both own it
        (handle / LOCK_NAME).unlink()
    except OSError:
        pass
    finally:
        fh.close()  # closing the descriptor drops the flock


def _same_file(fh, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fh.fileno()), os.stat(path))
    except OSError:
        return False


def _busy(path: Path, what: str, owner: dict[str, Any]) -> RmkitError:
    return RmkitError(
        f"{what} {path} is in use by another rmkit run ({_describe(owner)})",
        hint="wait for that run to finish or stop it, or choose another output folder; "
        "two runs writing one folder would corrupt it",
    )


@contextmanager
def lock_output(
    folder: str | os.PathLike,
    *,
    what: str = "output",
    command: str | None = None,
    main_only: bool = True,
):
    """Hold the lock on ``folder`` for the ``with`` block (only on the main process of a
    multi-process launch when ``main_only``)."""
    handle = (
        acquire(folder, what=what, command=command)
        if (not main_only or is_main_process())
        else None
    )
    try:
        yield handle
    finally:
        release(handle)


def hold_until_exit(folder: str | os.PathLike, *, what: str = "output") -> Path | None:
    """Lock ``folder`` for the rest of the process (main process only); the lock is released
    at exit, or by the kernel if the process dies."""
    if not is_main_process():
        return None
    handle = acquire(folder, what=what)
    atexit.register(release, handle)
    return handle
