"""Scheduling of one :class:`~rmkit.generation.openai_api.OpenAIBackend` call: conversations are
read lazily on the backend's event loop, their samples become requests (or cache hits), and each
conversation is handed to the caller's thread the moment its last sample is in.

Flow control, all on the event-loop thread (no locks needed):

- A new conversation is read only while fewer than ``lookahead`` requests are queued or in
  flight (a request waiting out a retry backoff does not count: it holds no connection) and
  fewer than ``buffer_max`` finished conversations wait for the caller.
- Every request runs as its own task behind the backend's semaphore (``concurrency``); the
  backend's ``job`` does the retries. When a request finishes, the conversations waiting for
  it are filled in, finished ones go to the caller through a thread-safe queue, and reading
  resumes.

The caller's side is :func:`stream_results`, a generator that takes finished conversations off
the queue and tells the loop, every ``buffer_max // 2`` of them, how many it took (so reading
can resume; telling it less often saves a wake-up of the loop per conversation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Coroutine, Iterable, Iterator
from dataclasses import replace
from typing import Any, Protocol

from rmkit.errors import RmkitError
from rmkit.generation.base import Completion, SamplingParams, canonical_messages, request_key
from rmkit.generation.openai_wire import encode_messages

log = logging.getLogger(__name__)


class StreamBackend(Protocol):
    """What a call reads from its backend (:class:`rmkit.generation.openai_api.OpenAIBackend`
    is one): the request limit, the error policy, the cache and the per-sample request."""

    concurrency: int
    on_error: str
    cache: Any  # a CompletionCache, or None

    async def job(
        self, call: StreamCall, key: str, prompt: SharedPrompt, index: int
    ) -> Completion | RmkitError: ...

    def count_cache_hit(self, comp: Completion) -> None: ...


_END = object()  # queued after the call's coroutine has finished


class StreamCall:
    """The state of one ``generate``/``generate_iter`` call (see the module docstring).

    Read by the caller after the end: ``errors`` (the final error of each failed request),
    ``n_jobs`` (requests started), ``next_index`` (conversations read), ``raised`` (what
    reading a conversation raised, or an unexpected internal error; None normally).
    """

    def __init__(
        self,
        backend: StreamBackend,
        conversations: Iterable[list[dict]],
        params: SamplingParams,
        *,
        lookahead: int,
        buffer_max: int,
        collect: bool = False,
    ):
        self.backend = backend
        # collect: keep finished conversations in ``collected`` for the end instead of handing
        # each over at once (a plain ``generate``: saves a thread switch per conversation)
        self.collected: dict[int, list[Completion]] | None = {} if collect else None
        self.params = params
        self.lookahead, self.buffer_max = max(1, lookahead), max(1, buffer_max)
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.closed = threading.Event()  # set when the call's coroutine has fully finished
        self.errors: list[RmkitError] = []
        self.n_jobs = 0
        self.next_index = 0
        self.raised: BaseException | None = None
        self.fatal = False  # an auth/model error: send nothing more
        self.stopped = False  # the caller left early
        self.sem: asyncio.Semaphore | None = None
        self._source = iter(conversations)
        self._exhausted = False
        self._slots: dict[int, list[Completion | None]] = {}
        self._missing: dict[int, int] = {}
        self._failed: set[int] = set()
        self._waiting: dict[str, list[tuple[int, int]]] = {}
        self._answers: dict[str, Completion] = {}  # without a cache: this call's answers by key
        self._digests: dict[str, str] = {}
        self._active = 0
        self._unconsumed = 0
        self._tasks: set[asyncio.Task] = set()
        self._done: asyncio.Event | None = None

    # ----------------------------------------------------------------- lifecycle (loop thread)

    async def run(self) -> None:
        """Read, send and deliver until every conversation is answered (or the caller left)."""
        if self.stopped:
            return
        self.sem = asyncio.Semaphore(self.backend.concurrency)
        self._done = asyncio.Event()
        try:
            self._top_up()
            await self._done.wait()
        finally:
            if self._tasks:  # stopped early, or an internal error: unwind the requests
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def stop(self) -> None:
        """The caller stopped iterating: cancel the requests and end :meth:`run`."""
        self.stopped = True
        for task in list(self._tasks):
            task.cancel()
        if self._done is not None:
            self._done.set()

    def consumed(self, count: int) -> None:
        """The caller took ``count`` more finished conversations."""
        self._unconsumed -= count
        self._top_up()

    def sleeping(self, asleep: bool) -> None:
        """A request starts (True) or ends (False) a retry backoff: it frees its lookahead slot."""
        self._active += -1 if asleep else 1
        if asleep:
            self._top_up()

    # ----------------------------------------------------------------- reading

    def _top_up(self) -> None:
        while (
            not self._exhausted
            and not self.fatal
            and not self.stopped
            and self._active < self.lookahead
            and self._unconsumed < self.buffer_max
        ):
            try:
                conv = next(self._source)
                canon = canonical_messages(conv, self._digests)
            except StopIteration:
                self._exhausted = True
            except Exception as e:  # reading or hashing a conversation failed: stop reading
                self.raised = e
                self._exhausted = True
            else:
                self._add(self.next_index, conv, canon)
                self.next_index += 1
        self._check_done()

    def _add(self, ci: int, conv: list[dict], canon: list[dict]) -> None:
        """Register conversation ``ci``: a cache hit, a duplicate or a new request per sample."""
        be, params = self.backend, self.params
        comps: list[Completion | None] = [None] * params.n
        missing = 0
        prompt: SharedPrompt | None = None
        for s in range(params.n):
            index = 0 if params.greedy else s
            key = request_key(be.model, canon, params, index)
            be.stats["requests"] += 1
            hit = be.cache.get(key) if be.cache is not None else self._answers.get(key)
            if hit is not None:
                comps[s] = replace(hit, cached=True)
                be.count_cache_hit(hit)
                continue
            missing += 1
            if key in self._waiting:
                self._waiting[key].append((ci, s))
            else:
                self._waiting[key] = [(ci, s)]
                prompt = prompt or SharedPrompt(conv)
                self._start(key, prompt, index)
        if missing:
            self._slots[ci], self._missing[ci] = comps, missing
        else:
            self._emit(ci, comps)  # type: ignore[arg-type]

    # ----------------------------------------------------------------- requests

    def _start(self, key: str, prompt: SharedPrompt, index: int) -> None:
        self._active += 1
        self.n_jobs += 1
        task = asyncio.get_running_loop().create_task(self._run_job(key, prompt, index))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_job(self, key: str, prompt: SharedPrompt, index: int) -> None:
        try:
            result = await self.backend.job(self, key, prompt, index)
        except Exception as e:  # a bug, not a failed request: end the call and raise it
            self.raised = self.raised or e
            self.stop()
            return
        self._active -= 1
        self._resolve(key, result)
        self._top_up()

    def _resolve(self, key: str, result: Completion | RmkitError) -> None:
        """Fill every sample waiting for ``key`` (the first gets the answer, the others a copy
        marked ``cached``: they cost no request)."""
        slots = self._waiting.pop(key)
        failed = isinstance(result, RmkitError)
        if failed:
            self.errors.append(result)  # type: ignore[arg-type]
            comp = Completion(text="", n_tokens=0, mean_logprob=None, finish_reason="error")
        else:
            comp = result  # type: ignore[assignment]
            if self.backend.cache is None:
                self._answers[key] = comp
        for i, (ci, s) in enumerate(slots):
            got = comp
            if i and not failed:
                got = replace(comp, cached=True)
                self.backend.count_cache_hit(comp)
            self._fill(ci, s, got, failed)

    def _fill(self, ci: int, s: int, comp: Completion, failed: bool) -> None:
        self._slots[ci][s] = comp
        if failed:
            self._failed.add(ci)
        self._missing[ci] -= 1
        if self._missing[ci]:
            return
        del self._missing[ci]
        comps = self._slots.pop(ci)
        if ci in self._failed:
            self._failed.discard(ci)
            if self.backend.on_error == "raise":
                return  # reported through ``errors`` at the end
        self._emit(ci, comps)  # type: ignore[arg-type]

    def _emit(self, ci: int, comps: list[Completion]) -> None:
        if self.collected is not None:
            self.collected[ci] = comps
            return
        self._unconsumed += 1
        self.out.put((ci, comps))

    def _check_done(self) -> None:
        finished = (self._exhausted or self.fatal) and not self._slots and not self._waiting
        if finished and self._done is not None:
            self._done.set()


class SharedPrompt:
    """A conversation's ``messages`` JSON, encoded on first use and shared by the requests of
    its samples (so ``n`` samples read and base64-encode its images once); it lives as long as
    one of those requests does."""

    __slots__ = ("conversation", "_json")

    def __init__(self, conversation: list[dict]):
        self.conversation = conversation
        self._json: bytes | None = None

    def messages_json(self) -> bytes:
        if self._json is None:
            self._json = encode_messages(self.conversation)
        return self._json


async def _guarded(coro: Coroutine, call: StreamCall) -> None:
    try:
        await coro
    finally:
        call.closed.set()


def stream_results(
    loop: asyncio.AbstractEventLoop, call: StreamCall, coro: Coroutine[Any, Any, None]
) -> Iterator[tuple[int, list[Completion]]]:
    """Run ``coro`` (which runs ``call``) on ``loop``; yield finished conversations in the
    caller's thread. Raises what reading the conversations raised, or an internal error, at the
    end; leaving early stops the call and waits (up to 30 s) for its requests to unwind."""
    fut = asyncio.run_coroutine_threadsafe(_guarded(coro, call), loop)
    fut.add_done_callback(lambda _: call.out.put(_END))
    finished = False
    taken, report_every = 0, max(1, call.buffer_max // 2)
    try:
        while True:
            item = call.out.get()
            if item is _END:
                break
            taken += 1
            if taken >= report_every:
                # The loop stops reading only with buffer_max conversations untaken, i.e. at
                # least report_every in the queue: taking them reaches this line, so no stall.
                loop.call_soon_threadsafe(call.consumed, taken)
                taken = 0
            yield item
        finished = True
        fut.result()
        if call.raised is not None:
            raise call.raised
    finally:
        if not finished:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(call.stop)
                if not call.closed.wait(timeout=30):
                    log.warning("requests of an abandoned generate call did not stop in 30 s")
