"""stderr console, logging handler and progress bars (rank 0 only; plain lines off a terminal)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_ERR = None


def err_console():
    """The shared rich console on stderr (created lazily)."""
    global _ERR
    if _ERR is None:
        from rich.console import Console

        _ERR = Console(stderr=True, highlight=False)
    return _ERR


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def stderr_handler() -> logging.Handler:
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        h: logging.Handler = RichHandler(console=err_console(), show_path=False, show_time=False)
        h.setFormatter(logging.Formatter("%(message)s"))
    else:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    return h


class Progress:
    """A progress display: a rich bar on a terminal, a plain line every few seconds otherwise.

    Silent on ranks other than 0. ``update(n, **fields)`` advances and sets status fields.
    """

    def __init__(
        self, description: str, total: int | None = None, unit: str = "it", every_s: float = 10.0
    ):
        self.description, self.total, self.unit, self.every_s = description, total, unit, every_s
        self.n = 0
        self.fields: dict[str, object] = {}
        self._enabled = is_main_process() and os.environ.get("RMKIT_NO_PROGRESS", "") in ("", "0")
        self._tty = sys.stderr.isatty()
        self._rich = None
        self._task = None
        self._t0 = time.monotonic()
        self._last = self._t0

    def __enter__(self) -> Progress:
        if self._enabled and self._tty:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RP

            self._rich = RP(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
                console=err_console(),
                transient=False,
            )
            self._rich.start()
            self._task = self._rich.add_task(self.description, total=self.total, status="")
        return self

    def update(self, advance: int = 1, **fields: object) -> None:
        self.n += advance
        self.fields.update(fields)
        if not self._enabled:
            return
        status = "  ".join(f"{k}={_fmt(v)}" for k, v in self.fields.items())
        if self._rich is not None:
            self._rich.update(self._task, advance=advance, status=status)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s or (self.total is not None and self.n >= self.total):
            self._last = now
            tot = f"/{self.total}" if self.total is not None else ""
            err_console().print(
                f"{self.description}: {self.n}{tot} {self.unit} ({now - self._t0:.0f}s) {status}",
                markup=False,
                soft_wrap=True,
            )

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.stop()


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    with Progress(description, total) as p:
        for x in items:
            yield x
            p.update(1)
