"""Generation through an OpenAI-compatible server that returns token ids (RL rollouts).

:class:`TokenServerBackend` is a :class:`~rmkit.generation.base.Backend` for servers that
offer vLLM's extensions of the chat-completions API - ``vllm serve`` and ``rmkit serve``:

- ``return_token_ids: true``: the answer carries ``prompt_token_ids`` (the prompt as the model
  saw it) and, per choice, ``token_ids`` (the generated ids, the end-of-turn token included
  when generation stopped on it). Training uses these ids, never a re-tokenization of the text.
- ``logprobs: true``: one log-probability per generated token - the behaviour log-probs. Both
  servers report the log-softmax of the raw logits (temperature 1, before top-p): vLLM's
  default ``logprobs_mode`` ``raw_logprobs``, and rmkit's local backend alike.
- ``top_k`` and ``repetition_penalty`` (vLLM's sampling fields) are sent with every request,
  neutral values included (``top_k: -1`` is "off"): vLLM otherwise fills them from the model's
  ``generation_config.json`` (its ``--generation-config auto``), and the trainer's log-probs
  would not know of them.
- ``n`` and ``seed``: the ``n`` completions of a conversation are one request (the server
  shares the prompt's prefill); conversation ``i`` of a call is sent with ``seed + i``. A
  greedy request is sent with ``n = 1`` (vLLM refuses ``n > 1`` without sampling) and its
  answer repeated.
- runtime LoRA loading: ``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter``
  (:meth:`load_adapter`, :meth:`unload_adapter`); requests then name the adapter as their
  ``model`` (:attr:`model`, switched by the caller).

Requests run on a small thread pool (``concurrency`` in flight); failures are retried with the
policy of :mod:`rmkit.generation.retry` (connection errors, timeouts, 5xx, 429: backoff, at most
``max_retries`` retries), then raise one :class:`RmkitError` naming the server. No cache: RL
samples are never answered twice.

The API key is read from the environment variable ``api_key_env`` (placeholder "EMPTY" when
unset) and never logged or put in an error message.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from rmkit.errors import RmkitError
from rmkit.generation import retry as rp
from rmkit.generation.base import Completion, SamplingParams

log = logging.getLogger(__name__)


class TokenServerBackend:
    """Chat completions with token ids from one server (see the module docstring).

    ``model``: the name requests send (the base model's served name, or a loaded adapter's);
    ``policy_version``: stamped on every completion (the caller sets it when it switches
    ``model`` to a newer adapter).
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 3,
        timeout: float = 600.0,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        jitter_seed: int | None = None,
    ):
        import httpx

        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise RmkitError(
                f"token server backend: concurrency must be >= 1, max_retries >= 0, timeout > 0 "
                f"(got {concurrency}, {max_retries}, {timeout})"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.policy_version: int | None = None
        self.max_retries, self.timeout = max_retries, float(timeout)
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self._rng = random.Random(jitter_seed)
        self._key = os.environ.get(api_key_env) or ""
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(self.timeout, connect=10.0),
            headers={
                "Authorization": f"Bearer {self._key or 'EMPTY'}",
                "Content-Type": "application/json",
            },
            limits=httpx.Limits(max_connections=concurrency + 2),
        )
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="rmkit-token-server")
        self._lock = threading.Lock()
        self.stats: dict[str, Any] = {
            "requests": 0,
            "retries": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "server_gen_s": 0.0,  # model time the server reported (Server-Timing "gen")
            "wall_s": 0.0,
            "failures": {},
        }

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        conversations: list[list[dict]],
        params: SamplingParams,
        model: str | None = None,
        policy_version: int | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` completions per conversation, each with token ids, behaviour log-probs
        and the prompt's token ids; raises :class:`RmkitError` when a request fails for good.

        ``model`` / ``policy_version`` (default: the backend's :attr:`model` and
        :attr:`policy_version`) fix them for this call, so calls for different policy versions
        can run at the same time."""
        model = model or self.model
        version = self.policy_version if policy_version is None else policy_version
        if model is None:
            raise RmkitError("token server backend: no model name set")
        t0 = time.perf_counter()
        futures = [
            self._pool.submit(self._conversation, conv, params, i, model, version)
            for i, conv in enumerate(conversations)
        ]
        results, errors = [], []
        for f in futures:
            try:
                results.append(f.result())
            except RmkitError as e:
                errors.append(e)
                results.append([])
        with self._lock:
            self.stats["wall_s"] += time.perf_counter() - t0
        if errors:
            first = errors[0]
            raise RmkitError(
                f"{len(errors)} of {len(conversations)} rollout request(s) to {self.base_url} "
                f"failed; first: {first.message}",
                hint=first.hint or "check the server (its log, and that it is still running)",
            )
        return results

    def request_body(
        self, conv: list[dict], params: SamplingParams, index: int, model: str | None = None
    ) -> dict:
        """The chat-completions body for conversation ``index`` of a call (module docstring)."""
        from rmkit.generation.media import to_openai_messages

        n = 1 if params.greedy else params.n
        body: dict[str, Any] = {
            "model": model or self.model,
            "messages": to_openai_messages(conv),
            "n": n,
            "temperature": params.temperature,
            "max_tokens": params.max_new_tokens,
            "logprobs": True,
            "return_token_ids": True,
        }
        if not params.greedy and params.top_p < 1.0:
            body["top_p"] = params.top_p
        # always explicit: a vLLM server otherwise samples with the model's
        # generation_config.json defaults (e.g. repetition_penalty 1.05), which the trainer's
        # log-probs know nothing about
        body["top_k"] = params.top_k if params.top_k > 0 else -1
        body["repetition_penalty"] = float(params.repetition_penalty)
        if params.seed is not None:
            body["seed"] = params.seed + index
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    def _conversation(
        self, conv: list[dict], params: SamplingParams, index: int, model: str, version
    ) -> list[Completion]:
        body = self.request_body(conv, params, index, model)
        n = body["n"]
        data, timing = self._post_json("/chat/completions", orjson.dumps(body))
        comps = parse_token_answer(data, n, self.base_url)
        for c in comps:
            c.policy_version = version
        with self._lock:
            self.stats["prompt_tokens"] += len(comps[0].prompt_token_ids or [])
            self.stats["completion_tokens"] += sum(len(c.token_ids or []) for c in comps)
            self.stats["server_gen_s"] += timing.get("gen", 0.0)
        if n != params.n:
            comps = [copy.deepcopy(comps[0]) for _ in range(params.n)]
        return comps

    # ------------------------------------------------------------------ server management

    def served_models(self) -> list[dict[str, Any]]:
        """The ``data`` list of ``GET /v1/models`` (one try, no retries)."""
        import httpx

        try:
            r = self._client.get("/models", timeout=10.0)
        except httpx.HTTPError as e:
            raise RmkitError(f"no server answers at {self.base_url} ({_brief(e)})") from None
        if r.status_code != 200:
            raise RmkitError(f"{self.base_url}/models answered HTTP {r.status_code}")
        try:
            return list(orjson.loads(r.content)["data"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise RmkitError(f"{self.base_url}/models did not answer a model list") from None

    def wait_ready(self, timeout_s: float, process: Any = None) -> list[dict[str, Any]]:
        """Poll ``GET /v1/models`` until it answers (returns its model list).

        ``process`` (a :class:`~rmkit.generation.launch.ServerProcess`) is checked between
        polls: a server that exits stops the wait at once, with the end of its log.
        """
        deadline = time.monotonic() + timeout_s
        last = ""
        while True:
            if process is not None:
                process.check_alive("before it was ready")
            try:
                return self.served_models()
            except RmkitError as e:
                last = e.message
            if time.monotonic() >= deadline:
                raise RmkitError(
                    f"no server became ready at {self.base_url} within {timeout_s:g}s ({last})",
                    hint="start the server first (or give a launch block), check the URL and "
                    "port, or raise the readiness timeout",
                )
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def base_model_name(self) -> str:
        """The served name of the base model (the first listed model that is not an adapter)."""
        models = self.served_models()
        base = [m["id"] for m in models if isinstance(m, dict) and not m.get("parent")]
        if not base:
            raise RmkitError(f"{self.base_url}/models lists no base model")
        return str(base[0])

    def load_adapter(self, name: str, path: str, inplace: bool = False) -> None:
        """Load a PEFT adapter folder on the server under ``name``."""
        body = {"lora_name": name, "lora_path": str(path), "load_inplace": inplace}
        self._post_json("/load_lora_adapter", orjson.dumps(body), expect_json=False)

    def unload_adapter(self, name: str) -> None:
        body = {"lora_name": name}
        self._post_json("/unload_lora_adapter", orjson.dumps(body), expect_json=False)

    def reload_weights(self, path: str) -> None:
        """Replace the served model's weights with the ``save_pretrained`` folder ``path``
        (vLLM's ``/collective_rpc`` ``reload_weights``, which needs ``VLLM_SERVER_DEV_MODE=1``;
        rmkit serve with ``--enable-weight-reload``), then drop its prefix cache."""
        body = {"method": "reload_weights", "kwargs": {"weights_path": str(path)}}
        self._post_json(self._root + "/collective_rpc", orjson.dumps(body), expect_json=False)
        self._post_json(self._root + "/reset_prefix_cache", b"", expect_json=False)

    @property
    def _root(self) -> str:
        """Server root relative to ``base_url`` (vLLM's admin routes live outside ``/v1``)."""
        return "/.." if self.base_url.endswith("/v1") else ""

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    # ------------------------------------------------------------------ HTTP with retries

    def _post_json(
        self, path: str, body: bytes, expect_json: bool = True
    ) -> tuple[Any, dict[str, float]]:
        """POST with retries; returns (parsed JSON or text, Server-Timing durations in s)."""
        import httpx

        for attempt in range(self.max_retries + 1):
            with self._lock:
                self.stats["requests"] += 1
            retry_after = None
            try:
                r = self._client.post(path, content=body)
            except httpx.TimeoutException:
                kind, detail = rp.TIMEOUT, f"no answer within {self.timeout:g}s"
            except httpx.TransportError as e:
                kind, detail = rp.CONNECTION, _brief(e)
            else:
                if r.status_code == 200:
                    timing = parse_server_timing(r.headers.get("server-timing"))
                    if not expect_json:
                        return r.text, timing
                    try:
                        return orjson.loads(r.content), timing
                    except orjson.JSONDecodeError:
                        kind, detail = rp.MALFORMED, "answer is not valid JSON"
                else:
                    kind = rp.kind_for_status(r.status_code)
                    detail = f"HTTP {r.status_code}: {self._scrub(_error_message(r))}"
                    if not rp.is_retryable(kind):
                        raise RmkitError(
                            f"{self.base_url}{path} answered {detail}",
                            hint=_client_hint(path, r.status_code),
                        )
                    retry_after = rp.parse_retry_after(dict(r.headers))
            self._count_failure(kind)
            if attempt == self.max_retries:
                raise RmkitError(
                    f"{self.base_url}{path}: gave up after {attempt + 1} attempt(s): "
                    f"{kind}: {detail}",
                    hint="the server keeps failing (is it still running? see its log)",
                )
            with self._lock:
                self.stats["retries"] += 1
            delay = rp.backoff_delay(
                attempt, base=self.backoff_base, cap=self.backoff_max, rng=self._rng,
                retry_after=retry_after, retry_after_max=self.backoff_max,
            )  # fmt: skip
            log.debug(
                "%s failed (%s: %s); retry %d in %.2fs", path, kind, detail, attempt + 1, delay
            )
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _count_failure(self, kind: str) -> None:
        with self._lock:
            self.stats["failures"][kind] = self.stats["failures"].get(kind, 0) + 1

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key and len(self._key) >= 4 else text


def parse_token_answer(data: Any, n: int, where: str = "the server") -> list[Completion]:
    """The ``n`` completions of a chat-completions answer with ``return_token_ids``.

    Each completion has ``token_ids``, ``token_logprobs`` (one per id), ``prompt_token_ids``
    and ``n_tokens``; ``finish_reason`` is "length" or "stop". Raises :class:`RmkitError` when
    the server did not send token ids (it lacks vLLM's extension) or the answer is malformed.
    """
    try:
        choices = sorted(data["choices"], key=lambda c: int(c.get("index", 0)))
        prompt_ids = data.get("prompt_token_ids")
    except (KeyError, TypeError, AttributeError, ValueError):
        raise RmkitError(f"{where}: the answer is not a chat completion") from None
    if len(choices) != n:
        raise RmkitError(f"{where}: asked for {n} completion(s), got {len(choices)}")
    if not _int_list(prompt_ids):
        raise RmkitError(
            f"{where}: the answer has no prompt_token_ids",
            hint="RL through a server needs vLLM's return_token_ids extension "
            "(vLLM >= 0.10.2, or rmkit serve)",
        )
    out = []
    for c in choices:
        ids = c.get("token_ids")
        if not _int_list(ids) or not ids:
            raise RmkitError(
                f"{where}: choice {c.get('index')} has no token_ids",
                hint="RL through a server needs vLLM's return_token_ids extension",
            )
        entries = ((c.get("logprobs") or {}).get("content")) or []
        lps = [e.get("logprob") for e in entries if isinstance(e, dict)]
        if len(lps) != len(ids) or not all(isinstance(x, (int, float)) for x in lps):
            raise RmkitError(
                f"{where}: choice {c.get('index')} has {len(lps)} log-probs for {len(ids)} tokens"
            )
        text = (c.get("message") or {}).get("content") or ""
        out.append(
            Completion(
                text=text,
                n_tokens=len(ids),
                mean_logprob=sum(lps) / len(lps),
                finish_reason="length" if c.get("finish_reason") == "length" else "stop",
                token_ids=[int(t) for t in ids],
                token_logprobs=[float(x) for x in lps],
                prompt_token_ids=[int(t) for t in prompt_ids],
            )
        )
    return out


def parse_server_timing(header: str | None) -> dict[str, float]:
    """``Server-Timing: gen;dur=12.5, queue;dur=3`` -> ``{"gen": 0.0125, "queue": 0.003}``
    (seconds; entries without a duration are skipped).

    >>> parse_server_timing("gen;dur=1500, queue;desc=x;dur=2, misc")
    {'gen': 1.5, 'queue': 0.002}
    """
    out: dict[str, float] = {}
    for entry in (header or "").split(","):
        name, *attrs = [p.strip() for p in entry.split(";")]
        for a in attrs:
            key, _, value = a.partition("=")
            if key.strip() == "dur" and name:
                with contextlib.suppress(ValueError):
                    out[name] = float(value) / 1000.0
    return out


def _int_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def _brief(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"[:300]


def _error_message(r: Any) -> str:
    try:
        body = orjson.loads(r.content)
    except orjson.JSONDecodeError:
        return r.text[:300]
    inner = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(inner, dict):
        return str(inner.get("message") or inner.get("detail") or inner)[:300]
    return str(inner)[:300]


def _client_hint(path: str, status: int) -> str:
    if path.endswith(("collective_rpc", "reset_prefix_cache")) and status == 404:
        return (
            "full-weight sync needs weight reloading: start vLLM with VLLM_SERVER_DEV_MODE=1, "
            "or rmkit serve with --enable-weight-reload (a launch block does this)"
        )
    if path.endswith("lora_adapter") and status == 404:
        return (
            "the server has no runtime LoRA loading: start vLLM with --enable-lora and "
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or rmkit serve with --enable-lora"
        )
    if status in (401, 403):
        return "check the API key (rl.rollout.server.api_key_env)"
    if status == 404:
        return "check the server URL and the served model name"
    return "the server refused the request; see its message"
