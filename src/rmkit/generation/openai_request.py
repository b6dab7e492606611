"""One sample's request for :class:`~rmkit.generation.openai_api.OpenAIBackend`: the HTTP call,
retries with backoff, empty answers, the mapping of HTTP errors, and usage accounting.

:class:`OpenAIRequests` is the backend's request half (a mixin; the backend's constructor sets
the attributes it reads). The behaviour is described in :mod:`rmkit.generation.openai_api`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

from rmkit.errors import RmkitError
from rmkit.generation import retry as rp
from rmkit.generation.base import Completion, CompletionCache, SamplingParams
from rmkit.generation.openai_wire import Retryable, decode_answer, request_bytes, server_message
from rmkit.utils.redact import redact_url

if TYPE_CHECKING:  # pragma: no cover
    from rmkit.generation.openai_stream import SharedPrompt, StreamCall

log = logging.getLogger(__name__)


class OpenAIRequests:
    """Sends one sample with retries (:meth:`job`) and keeps the backend's ``stats``."""

    base_url: str
    model: str
    api_key_env: str
    max_retries: int
    greedy_empty_retries: int
    timeout: float
    max_tokens_field: str
    explicit_sampling: bool
    backoff_base: float
    backoff_max: float
    retry_after_max: float
    cache: CompletionCache | None
    stats: dict[str, Any]
    _rng: random.Random
    _key: str
    _client: Any
    _warned_empty: bool

    def _open_client(self) -> Any:
        """The SDK client, created on first use (on the loop thread; importing the SDK takes
        about a second of CPU, and a call answered from the cache needs no client)."""
        if self._client is None:
            import openai

            self._client = openai.AsyncOpenAI(
                base_url=self.base_url,
                api_key=self._key or "EMPTY",
                max_retries=0,
                timeout=self.timeout,
            )
        return self._client

    async def job(self, call: StreamCall, key: str, prompt: SharedPrompt, index: int):
        """One sample with retries; returns the completion or the final :class:`RmkitError`.

        The request body (with base64 images) is built when the request is first sent, so at
        most about ``lookahead`` bodies are in memory at a time; the samples of a conversation
        share its encoded messages.
        """
        params = call.params
        body: bytes | None = None
        empties = 0
        for attempt in range(self.max_retries + 1):
            try:
                async with call.sem:
                    if call.fatal:
                        return RmkitError(
                            "not sent: another request failed with an auth/model error"
                        )
                    if body is None:
                        body = request_bytes(
                            self.model,
                            prompt.messages_json(),
                            params,
                            index,
                            self.max_tokens_field,
                            self.explicit_sampling,
                        )
                    self.stats["api_calls"] += 1
                    comp = await self._attempt(body, params)
                if not comp.text.strip():
                    empties += 1
                    last = empties > self.greedy_empty_retries or attempt == self.max_retries
                    if not (params.greedy and last):
                        raise Retryable(rp.EMPTY, "answer has empty content")
                    comp = self._keep_empty(comp, empties)
            except Retryable as e:
                self._count_failure(e.kind)
                if attempt == self.max_retries:
                    return RmkitError(
                        f"gave up after {attempt + 1} attempt(s): {e.kind}: {self._scrub(e.detail)}",
                        hint="the server keeps failing; raise max_retries or check the server",
                    )
                self.stats["retries"] += 1
                await self._backoff(call, attempt, e)
                continue
            except RmkitError as e:
                self._count_failure(rp.CLIENT)
                if getattr(e, "status", None) in rp.FATAL_STATUS:
                    call.fatal = True
                return e
            self._count_success(comp)
            if self.cache is not None:
                self.cache.put(key, comp)
            return comp
        raise AssertionError("unreachable")  # pragma: no cover

    async def _backoff(self, call: StreamCall, attempt: int, e: Retryable) -> None:
        delay = rp.backoff_delay(
            attempt,
            base=self.backoff_base,
            cap=self.backoff_max,
            rng=self._rng,
            retry_after=e.retry_after,
            retry_after_max=self.retry_after_max,
        )
        log.debug(
            "request failed (%s: %s); retry %d in %.2fs",
            e.kind,
            self._scrub(e.detail),
            attempt + 1,
            delay,
        )
        call.sleeping(True)
        try:
            await self._sleep(delay)
        finally:
            call.sleeping(False)

    async def _sleep(self, seconds: float) -> None:
        """The backoff wait (a method so tests can observe the delays)."""
        await asyncio.sleep(seconds)

    def _keep_empty(self, comp: Completion, empties: int) -> Completion:
        """A greedy request answered empty ``empties`` times: keep that as its answer (warn
        once per backend, then at debug level)."""
        self.stats["empty_answers"] += 1
        level, self._warned_empty = logging.DEBUG if self._warned_empty else logging.WARNING, True
        log.log(
            level,
            "a greedy (temperature 0) request got empty content %d time(s); kept as "
            "an empty answer (finish_reason 'empty'): retrying cannot change it",
            empties,
        )
        comp.finish_reason = "empty"
        return comp

    def _count_success(self, comp: Completion) -> None:
        s = self.stats
        s["successes"] += 1
        s["prompt_tokens"] += comp.prompt_tokens or 0
        s["completion_tokens"] += comp.completion_tokens or 0

    def count_cache_hit(self, comp: Completion) -> None:
        """Account one sample answered without a request."""
        s = self.stats
        s["cache_hits"] += 1
        s["cached_prompt_tokens"] += comp.prompt_tokens or 0
        s["cached_completion_tokens"] += comp.completion_tokens or 0

    async def _attempt(self, body: bytes, params: SamplingParams) -> Completion:
        """One HTTP call. Raises Retryable or RmkitError (with ``.status``) on failure.

        Sent with the client's generic ``post`` (auth, headers, timeout and HTTP errors handled
        by the SDK) with the body already serialised by orjson, and the answer taken as bytes
        and parsed here with orjson: skipping the SDK's request transform and response models
        keeps the client's CPU cost per request low enough for high concurrency.
        """
        import openai

        try:
            client = self._client or self._open_client()
            raw = await client.post("/chat/completions", content=body, cast_to=bytes)
        except openai.APITimeoutError:
            raise Retryable(rp.TIMEOUT, f"no answer within {self.timeout:g}s") from None
        except openai.APIConnectionError as e:
            raise Retryable(rp.CONNECTION, str(e)) from None
        except openai.APIStatusError as e:
            raise self._status_error(e) from None
        return decode_answer(raw, params.logprobs)

    def _status_error(self, e: Any) -> Exception:
        status = int(e.status_code)
        kind = rp.kind_for_status(status)
        message = self._scrub(server_message(e))
        if rp.is_retryable(kind):
            return Retryable(
                kind, f"HTTP {status}: {message}", rp.parse_retry_after(dict(e.response.headers))
            )
        url = redact_url(self.base_url)  # never print credentials embedded in the URL
        hint = rp.client_error_hint(status, self.api_key_env, url, self.model)
        err = RmkitError(f"{url} answered HTTP {status} for model {self.model!r}: {message}", hint)
        err.status = status  # type: ignore[attr-defined]
        return err

    def _count_failure(self, kind: str) -> None:
        self.stats["failures"][kind] = self.stats["failures"].get(kind, 0) + 1

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key and len(self._key) >= 4 else text
