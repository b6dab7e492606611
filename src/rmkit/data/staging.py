"""Output folders written as a whole, and outputs kept apart from their inputs.

A command that writes a dataset folder (``build-data``, ``build-data caption``, ``mix``) writes
everything into a staging folder next to the output (``.rmkit-build-<name>.<random>``) and
swaps it in with one atomic exchange of the two folders (``renameat2(RENAME_EXCHANGE)``); the
previous content is then deleted. A kill at any point leaves either the whole previous folder
or the whole new one under the output's name, never a mix; staging folders a killed run left
are removed by the next run (under the output's lock).

:func:`check_output_vs_inputs` refuses an output folder that is, contains or lies inside an
input (SECURITY-REVIEW L4), before anything is written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rmkit.errors import RmkitError
from rmkit.utils.io import TMP_PREFIX, exchange_dirs, fsync_dir

STAGING_PREFIX = ".rmkit-build-"


def check_output_vs_inputs(out: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output folder that is, contains or lies inside a local input (SECURITY-REVIEW
    L4): the run would overwrite its own source, or read its own output on a rerun. (An output
    beside an input file, e.g. ``data/out`` for ``data/raw.jsonl``, is fine.) Inputs that do not
    exist (hub ids, or missing files reported when read) are skipped."""
    shown = Path(out)
    o = shown.expanduser().resolve()
    for raw in inputs:
        p = Path(raw).expanduser()
        if not p.exists():
            continue
        try:
            q = p.resolve()
        except OSError:
            continue
        if q == o or o in q.parents:
            raise RmkitError(
                f"--output {shown} contains the input {raw}; the run would overwrite its own "
                "source",
                hint="choose an output folder outside the inputs' folders",
            )
        if q.is_dir() and q in o.parents:
            raise RmkitError(
                f"--output {shown} lies inside the input folder {raw}; a rerun would read its "
                "own output",
                hint="choose an output folder outside the input folder",
            )


def carried(name: str) -> bool:
    """Hidden rmkit files (lock, pipeline markers) that move with the folder on a commit."""
    return name.startswith(".rmkit") and not name.startswith((TMP_PREFIX, STAGING_PREFIX))


def check_foreign(out: Path, known: Iterable[str], command: str) -> None:
    """A commit replaces the whole folder: refuse one holding files ``command`` did not write
    (``known`` names, hidden ``.rmkit*`` files and temporary files are allowed)."""
    if not out.is_dir():
        return
    known = set(known)
    foreign = sorted(
        e.name
        for e in os.scandir(out)
        if e.name not in known and not carried(e.name) and not e.name.startswith(TMP_PREFIX)
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise RmkitError(
            f"--output {out} holds files that {command} did not write ({shown}); "
            "a run replaces the whole folder",
            hint="choose a new or empty output folder, or move those files away",
        )


def clean_staging(parent: Path, name: str) -> None:
    """Remove staging folders a killed run of ``name`` left next to it (call under the lock)."""
    prefix = f"{STAGING_PREFIX}{name}."
    for entry in os.scandir(parent):
        if entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)


def link_or_copy(src: str | os.PathLike, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (a copy where links are not possible)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def new_staging(out: Path) -> Path:
    """An empty staging folder next to ``out`` (which must be a resolved path)."""
    stage = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{out.name}.", dir=out.parent))
    os.chmod(stage, 0o777 & ~_umask())
    return stage


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def commit_folder(stage: Path, out: Path, keep: Iterable[str] = ()) -> None:
    """Swap the finished ``stage`` in for the existing folder ``out`` in one step, then drop
    the previous content. Hidden ``.rmkit*`` files of ``out`` and the files named in ``keep``
    (e.g. a cache that outlives a run) are carried over first (hard links)."""
    keep = set(keep)
    for entry in os.scandir(out):
        wanted = carried(entry.name) or entry.name in keep
        if wanted and entry.is_file(follow_symlinks=False) and not (stage / entry.name).exists():
            link_or_copy(entry.path, stage / entry.name)
    fsync_dir(stage)
    if exchange_dirs(stage, out):
        fsync_dir(out.parent)
        shutil.rmtree(stage, ignore_errors=True)  # now the previous content
        return
    # No atomic exchange on this OS / file system: two renames. A kill between them leaves
    # the previous folder under OLD_NAME and no folder under the output's name (never a mix).
    old = out.parent / f"{STAGING_PREFIX}{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(out, old)
    os.rename(stage, out)
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged(out: Path, keep: Iterable[str] = ()) -> Iterator[Path]:
    """Write a folder as a whole: yields a staging folder for ``out`` (an existing, locked,
    resolved folder) and commits it when the block ends without error; on an error the staging
    folder is removed and ``out`` is left as it was."""
    clean_staging(out.parent, out.name)
    stage = new_staging(out)
    try:
        yield stage
        commit_folder(stage, out, keep)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
