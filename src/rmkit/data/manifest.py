"""``manifest.json``: the record of a complete dataset folder, and its check by readers.

``rmkit build-data`` (and ``build-data caption`` / ``mix``) write ``manifest.json`` with an
``outputs`` table: for each split file its record count, SHA-256 and (build-data) size in bytes.
A reader of a dataset *folder* calls :func:`verify_manifest` before using a split file, so a folder
that is incomplete (no manifest), mixes files from two builds, or has a file edited or truncated
after the build stops with an error naming the file instead of being used silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rmkit.errors import RmkitError
from rmkit.utils.io import file_sha256, read_json

MANIFEST = "manifest.json"
_REBUILD = "rebuild the dataset (rmkit build-data), or pass the .jsonl file itself to use it as is"


def verify_manifest(
    folder: str | os.PathLike,
    files: Iterable[str] | None = None,
    *,
    require: bool = True,
    check_hash: bool = True,
) -> dict[str, Any] | None:
    """Check ``folder``'s split files against its ``manifest.json``; return the manifest.

    ``files`` names the files to check (e.g. ``["train.jsonl"]``; default: every file in the
    manifest's ``outputs``). A missing manifest is an error when ``require`` (returns None
    otherwise). Each checked file must be listed in the manifest, exist, and match its size
    (``bytes``, when recorded) and SHA-256; any difference raises :class:`RmkitError` naming the
    file.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        if not require:
            return None
        raise RmkitError(
            f"{folder}: no {MANIFEST}, so this is not a complete dataset folder "
            "(an interrupted or failed build, or a folder not written by rmkit)",
            hint=_REBUILD,
        )
    manifest = read_json(path)
    outputs = manifest.get("outputs") if isinstance(manifest, dict) else None
    if not isinstance(outputs, dict):
        raise RmkitError(f"{path}: no 'outputs' table (damaged manifest)", hint=_REBUILD)
    for name in list(outputs) if files is None else list(files):
        entry = outputs.get(name)
        f = folder / name
        if not isinstance(entry, dict):
            raise RmkitError(
                f"{f}: not listed in {path} (the file is not part of the recorded build)",
                hint=_REBUILD,
            )
        if not f.is_file():
            raise RmkitError(f"{f}: listed in {path} but missing", hint=_REBUILD)
        size = f.stat().st_size
        if isinstance(entry.get("bytes"), int) and size != entry["bytes"]:
            raise RmkitError(
                f"{f}: {size:,} bytes, but {path} records {entry['bytes']:,} "
                "(the file was changed after the build, or comes from another build)",
                hint=_REBUILD,
            )
        if check_hash and isinstance(entry.get("sha256"), str):
            got = file_sha256(f)
            if got != entry["sha256"]:
                raise RmkitError(
                    f"{f}: SHA-256 {got[:12]}… does not match {path} ({entry['sha256'][:12]}…); "
                    "the file was changed after the build, or comes from another build",
                    hint=_REBUILD,
                )
    return manifest


def dataset_file(path: str | os.PathLike, split: str) -> Path:
    """``path`` itself when it is a file, else ``path/<split>.jsonl`` checked against the
    folder's manifest (see :func:`verify_manifest`). A missing split file raises, naming the
    splits the manifest lists."""
    p = Path(path)
    if not p.is_dir():
        return p
    name = f"{split}.jsonl"
    manifest = verify_manifest(p, [], require=True)
    outputs = (manifest or {}).get("outputs", {})
    if name not in outputs:
        have = sorted(k.removesuffix(".jsonl") for k in outputs if k.endswith(".jsonl"))
        raise RmkitError(
            f"{p}: no split '{split}' in this dataset",
            hint=f"choose one of: {', '.join(have)}" if have else None,
        )
    verify_manifest(p, [name])
    return p / name
