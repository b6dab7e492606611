"""The caption cache of ``rmkit build-data caption`` and the settings that enter its keys.

One JSONL line per caption, appended with a single ``write`` on an ``O_APPEND`` descriptor, so
a run killed mid-write loses at most the line in flight (see :mod:`rmkit.data.caption`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from rmkit.errors import RmkitError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DEFAULT_PROMPT = (
    "Describe this image in detail for someone who cannot see it: the main subjects and their "
    "attributes, where things are placed, any visible text, and the setting and style."
)


@dataclass
class CaptionSettings:
    """How captions are made; ``prompt``, ``max_new_tokens``, ``temperature`` and (when not
    neutral) ``top_k`` / ``repetition_penalty`` enter the cache key."""

    prompt: str = DEFAULT_PROMPT
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    chunk_size: int = 8
    splits: tuple[str, ...] = SPLITS
    keep_text: bool = False  # also copy records that have no image (unchanged but for the id)


def caption_key(image_sha: str, model: str, settings: CaptionSettings) -> str:
    """The cache key of one caption: SHA-256 of the image hash, model, prompt and decoding."""
    payload = {
        "image": image_sha,
        "model": model,
        "prompt": settings.prompt,
        "max_new_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
    }
    # added later: in the key only when set, so caches from before them still answer
    if settings.top_k and settings.temperature > 0:
        payload["top_k"] = settings.top_k
    if settings.repetition_penalty != 1.0:
        payload["repetition_penalty"] = settings.repetition_penalty
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


class CaptionCache:
    """Append-only JSONL store ``{"key", "image", "model", "caption", "time"}`` (thread-safe).

    A torn last line (a run killed mid-write) is skipped on load and sealed with a newline.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.captions: dict[str, str] = {}
        self.skipped = 0
        if self.path.exists():
            for line in self.path.read_bytes().split(b"\n"):
                if not line.strip():
                    continue
                try:
                    row = orjson.loads(line)
                    self.captions[row["key"]] = str(row["caption"])
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    self.skipped += 1
        if self.skipped:
            log.warning(
                "%s: skipped %d unreadable line(s) (a run was killed mid-write)",
                self.path,
                self.skipped,
            )
        self._lock = threading.Lock()
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if self.path.stat().st_size and self.path.read_bytes()[-1:] != b"\n":
            os.write(self._fd, b"\n")

    def __contains__(self, key: str) -> bool:
        return key in self.captions

    def __len__(self) -> int:
        return len(self.captions)

    def put(self, key: str, image_sha: str, model: str, caption: str) -> None:
        line = orjson.dumps(
            {
                "key": key,
                "image": image_sha,
                "model": model,
                "caption": caption,
                "time": round(time.time(), 3),
            }
        )
        with self._lock:
            if self._fd is None:
                raise RmkitError(f"{self.path}: cache already closed")
            os.write(self._fd, line + b"\n")
            self.captions[key] = caption

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
