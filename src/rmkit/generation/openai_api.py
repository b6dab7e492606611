"""Generation through any OpenAI-compatible chat-completions server (a teacher API, vLLM, rmkit
serve), with bounded concurrency, retries and a content-keyed cache.

Callers stay synchronous: requests run on a private asyncio event loop in a daemon thread with
the real ``openai.AsyncOpenAI`` client (its own retries disabled - this package retries: one
sample's request in :mod:`.openai_request`, the policy in :mod:`rmkit.generation.retry`). At
most ``concurrency`` requests are in flight.

Two ways to call it: ``generate`` returns every conversation's completions at once (and can
report each conversation as it finishes through ``on_result``); ``generate_iter`` yields
``(conversation index, completions)`` as soon as a conversation's samples are all in, in
completion order, and reads its conversations lazily, so a caller can stream an unbounded
input and keep ``concurrency`` requests in flight all the time (see :mod:`.openai_stream`).

Samples: the ``n`` completions of a conversation are ``n`` separate requests (``n=1`` each), not
the API's ``n`` parameter, because not every server supports ``n`` and because each sample then
has its own cache entry (sample index in the key) and, when ``params.seed`` is set, its own
seed ``seed + sample_index``. Greedy requests (temperature 0) share sample index 0, so ``n``
greedy samples cost one call.

Cache: with ``cache_dir`` every successful sample is appended to ``cache_dir/completions.jsonl``
(with the server's token usage) the moment it arrives; a rerun answers those samples from the
file and makes no call. Identical requests inside one call are sent once. Without ``cache_dir``
only that in-call deduplication happens.

Empty answers: an answer with empty content is retried like a failure, except that a greedy
request (temperature 0) is retried only ``greedy_empty_retries`` times (default 1, at most
``max_retries``): its answer cannot change, so the empty answer is then kept as the completion,
with ``finish_reason="empty"`` (and cached), instead of spending the whole backoff schedule
(about a minute with the defaults) on it. Sampled requests keep all their retries.

Client CPU: bodies are serialised with orjson and sent as bytes, answers parsed from bytes
(the SDK's own JSON encoding costs about 20 ms per MB of base64 image); the ``n`` samples of a
conversation share its encoded messages. What remains, 2-3 ms per request on a 2-core machine,
is the SDK's HTTP stack (httpx, httpcore, anyio, h11): ``bench/results/api_concurrency.md``.

The API key is read from the environment variable ``api_key_env``. When it is unset a
placeholder key "EMPTY" is sent (fine for local servers). The key is never logged, cached, or put
in an error message (server messages are scrubbed of it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any

from rmkit.errors import RmkitError
from rmkit.generation.base import Completion, CompletionCache, SamplingParams
from rmkit.generation.openai_request import OpenAIRequests
from rmkit.generation.openai_stream import StreamCall, stream_results
from rmkit.utils.redact import redact_url

log = logging.getLogger(__name__)


class OpenAIBackend(OpenAIRequests):
    """Chat completions from an OpenAI-compatible server (see the module docstring; one
    sample's request, retries and accounting are in :class:`~.openai_request.OpenAIRequests`).

    ``on_error``: "raise" (default) raises :class:`RmkitError` after every other request has
    finished (their results are cached); "skip" returns an empty completion with
    ``finish_reason="error"`` for each sample that failed. ``max_tokens_field`` names the request
    field for ``max_new_tokens`` ("max_tokens", understood by most servers, or
    "max_completion_tokens" for newer OpenAI models). ``explicit_sampling``: send ``top_k``
    and ``repetition_penalty`` with every request, neutral values too (a server with vLLM's
    sampling fields; see :func:`~.openai_wire.sampling_extras`); without it only values set
    away from neutral are sent.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 8,
        timeout: float = 120.0,
        cache_dir: str | os.PathLike | None = None,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 120.0,
        on_error: str = "raise",
        max_tokens_field: str = "max_tokens",
        jitter_seed: int | None = None,
        greedy_empty_retries: int = 1,
        explicit_sampling: bool | None = False,
    ):
        if concurrency < 1 or max_retries < 0 or timeout <= 0 or greedy_empty_retries < 0:
            raise RmkitError(
                f"OpenAIBackend: concurrency must be >= 1, max_retries >= 0, timeout > 0, "
                f"greedy_empty_retries >= 0 (got {concurrency}, {max_retries}, {timeout}, "
                f"{greedy_empty_retries})"
            )
        if on_error not in ("raise", "skip"):
            raise RmkitError(
                f"OpenAIBackend: on_error must be 'raise' or 'skip' (got {on_error!r})"
            )
        if max_tokens_field not in ("max_tokens", "max_completion_tokens"):
            raise RmkitError(f"OpenAIBackend: unknown max_tokens_field {max_tokens_field!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.greedy_empty_retries = greedy_empty_retries
        self.timeout = float(timeout)
        self.on_error = on_error
        self.max_tokens_field = max_tokens_field
        self.explicit_sampling = bool(explicit_sampling)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self._rng = random.Random(jitter_seed)
        self._key = os.environ.get(api_key_env) or ""
        if not self._key:
            log.debug(
                "$%s is not set; sending the placeholder key 'EMPTY' (fine for local servers)",
                api_key_env,
            )
        self.cache = CompletionCache(cache_dir) if cache_dir is not None else None
        self.stats: dict[str, Any] = {
            "requests": 0,
            "api_calls": 0,
            "successes": 0,
            "cache_hits": 0,
            "retries": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cached_prompt_tokens": 0,
            "cached_completion_tokens": 0,
            "empty_answers": 0,
            "failures": {},
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._warned_empty = False

    # ------------------------------------------------------------------ public API

    def generate(
        self,
        conversations: list[list[dict]],
        params: SamplingParams,
        on_result: Callable[[int, list[Completion]], None] | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` completions for each conversation, in order (see the module docstring).

        ``on_result(conv_index, completions)`` (optional) is called in the caller's thread as
        each conversation's samples are all in, in completion order, before this returns. With
        ``on_error="raise"`` it is not called for a conversation whose request failed, and the
        error is raised once every other conversation has been reported.
        """
        if on_result is not None:
            results: list[list[Completion] | None] = [None] * len(conversations)
            for ci, comps in self.generate_iter(conversations, params):
                results[ci] = comps
                on_result(ci, comps)
            return results  # type: ignore[return-value]
        call = self._call(conversations, params, None, collect=True)
        for _ in self._stream(call):  # nothing is handed over one by one when collecting
            pass
        assert call.collected is not None
        return [call.collected[i] for i in range(len(conversations))]

    def generate_iter(
        self,
        conversations: Iterable[list[dict]],
        params: SamplingParams,
        *,
        lookahead: int | None = None,
    ) -> Iterator[tuple[int, list[Completion]]]:
        """Yield ``(conv_index, completions)`` for each conversation as soon as its ``params.n``
        samples are in (cache hits at once), in completion order.

        ``conversations`` is read lazily, on the backend's event-loop thread, as room frees up:
        at most ``lookahead`` requests (default ``2 * concurrency``) are queued or in flight, and
        at most ``max(4 * concurrency, 64)`` finished conversations wait for the caller, so a
        slow caller pauses the reading instead of filling memory. An exception raised while
        reading ``conversations`` is raised here after the requests already started finish.
        Errors: as :meth:`generate` (``on_error="raise"``: failed conversations are not yielded;
        one :class:`RmkitError` is raised at the end). Stopping the iteration early (``break``,
        an exception in the loop body) cancels the requests still in flight.
        """
        yield from self._stream(self._call(conversations, params, lookahead))

    def _call(self, conversations, params, lookahead, collect: bool = False) -> StreamCall:
        return StreamCall(
            self,
            conversations,
            params,
            lookahead=lookahead or 2 * self.concurrency,
            buffer_max=max(4 * self.concurrency, 64),
            collect=collect,
        )

    def _stream(self, call: StreamCall) -> Iterator[tuple[int, list[Completion]]]:
        yield from stream_results(self._ensure_loop(), call, call.run())
        self._raise_failures(call)
        log.debug(
            "openai backend: %d conversation(s), %d new request(s); totals %s",
            call.next_index,
            call.n_jobs,
            {k: v for k, v in self.stats.items() if k != "failures"},
        )

    def close(self) -> None:
        """Close the HTTP client, stop the event-loop thread and the cache file."""
        if self._loop is not None:
            if self._client is not None:
                self._run(self._client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._thread is not None
            self._thread.join(timeout=10)
            self._loop.close()
            self._loop = self._thread = self._client = None
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="rmkit-openai", daemon=True
            )
            self._thread.start()
        return self._loop

    def _run(self, coro: Coroutine) -> Any:
        """Run a coroutine on the private loop and wait for it (Ctrl-C cancels it)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self._ensure_loop())
        try:
            return fut.result()
        except BaseException:
            fut.cancel()
            raise

    def _raise_failures(self, call: StreamCall) -> None:
        errors = call.errors
        if errors and self.on_error == "raise":
            first = errors[0]
            raise RmkitError(
                f"{len(errors)} of {call.n_jobs} request(s) to {redact_url(self.base_url)} failed; "
                f"first: "
                f"{first.message}",
                hint=first.hint
                or "successful answers are cached; rerun to retry only the failed ones",
            )
