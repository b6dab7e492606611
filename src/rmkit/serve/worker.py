"""The model worker of ``rmkit serve``: one thread owns the model, fed by a bounded queue.

Request handlers (on the server's event loop) never touch the model. They put a :class:`Job`
on the queue (:meth:`ModelWorker.submit`; a full queue is a 503 with ``Retry-After``) and await
its events: the worker thread reports back through ``loop.call_soon_threadsafe``, so the event
loop is never blocked by model work.

Batching: when the worker takes a job whose :attr:`Job.key` is not None, it also takes every
queued job with the same key (in arrival order, up to ``capacity`` sequences), and the runner
generates them in one call. Jobs that arrive while a batch runs wait for the next one, so
concurrent requests batch up on their own and a lone request never waits for company.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from rmkit.serve.protocol import ApiError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    """One unit of model work and the way back to the request that is waiting for it.

    ``key``: jobs with equal non-None keys may share one batch; ``rows``: the sequences it
    adds to a batch. Events (``kind``, payload) arrive on :attr:`events` in the request's loop:
    "start" (the worker took it), "tokens" (streaming), "done", "error".
    """

    kind: str
    payload: Any = None
    key: Hashable | None = None
    rows: int = 1
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    t_submit: float = field(default_factory=time.perf_counter)
    t_start: float | None = None
    t_end: float | None = None
    cancelled: bool = False

    def bind(self) -> Job:
        """Attach the job to the running event loop (call from a request handler)."""
        self.loop = asyncio.get_running_loop()
        self.events = asyncio.Queue()
        return self

    def emit(self, kind: str, payload: Any = None) -> None:
        """Send an event to the waiting request (from the worker thread)."""
        if self.loop is None or self.events is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))

    def begin(self) -> None:
        self.t_start = time.perf_counter()

    @property
    def queue_ms(self) -> float:
        return ((self.t_start or self.t_submit) - self.t_submit) * 1000.0

    @property
    def gen_ms(self) -> float:
        if self.t_start is None:
            return 0.0
        return ((self.t_end or time.perf_counter()) - self.t_start) * 1000.0


class ModelWorker:
    """A thread that runs ``runner(batch)`` for each batch of queued jobs (module docstring)."""

    def __init__(
        self, runner: Callable[[list[Job]], None], *, max_queue: int = 256, capacity: int = 16
    ):
        self.runner, self.max_queue, self.capacity = runner, max_queue, capacity
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.busy = False

    def start(self) -> None:
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="rmkit-model", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the batch in progress finish (up to ``timeout``), fail what is still queued."""
        with self._cond:
            self._stopping = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in left:
            job.emit("error", ApiError(503, "the server is shutting down", code="shutting_down"))
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping or self._thread is None:
                raise ApiError(503, "the server is shutting down", code="shutting_down")
            if len(self._queue) >= self.max_queue:
                raise ApiError(
                    503,
                    f"the server is busy ({len(self._queue)} requests queued); retry shortly",
                    code="server_busy",
                    headers={"Retry-After": "1"},
                )
            self._queue.append(job)
            self._cond.notify()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _take(self) -> list[Job] | None:
        with self._cond:
            while True:
                while self._queue and self._queue[0].cancelled:
                    self._queue.popleft()
                if self._queue:
                    break
                if self._stopping:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch = [first]
            if first.key is not None:
                rows = first.rows
                for job in list(self._queue):
                    if job.cancelled:
                        self._queue.remove(job)
                    elif job.key == first.key and rows + job.rows <= self.capacity:
                        self._queue.remove(job)
                        batch.append(job)
                        rows += job.rows
            self.busy = True
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self.runner(batch)
            except Exception as e:  # the runner reports its own errors; this is a bug
                log.exception("model worker: batch failed")
                for job in batch:
                    job.emit("error", e)
            finally:
                self.busy = False
