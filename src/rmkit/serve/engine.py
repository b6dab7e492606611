"""The model side of ``rmkit serve``: what runs on the model-worker thread.

:class:`ServeEngine` owns the loaded model, its :class:`~rmkit.generation.hf.HFBackend`, the
runtime LoRA adapters and the :class:`~rmkit.serve.worker.ModelWorker`. Request handlers build
jobs with :meth:`ServeEngine.chat_job` / :meth:`ServeEngine.call_job` and submit them; the
worker runs them here.

Chat batching: requests share one ``generate_detailed`` call when they run under the same
adapter with the same sampling parameters (temperature, top-p, top-k, repetition penalty,
max tokens, stop strings, log-probs; ``n`` too, except for greedy requests, which are generated once and repeated) and
carry **no seed**. A request with a seed is always generated alone, exactly as
``HFBackend(loaded, batch_size).generate_detailed([conversation], params)`` generates it, so a
seeded request through the server equals local generation (RL rollouts rely on this).

Before generating, each request's prompt is tokenised on its own (``prompt_token_ids``: the ids
the model sees, no padding) and checked against the model's context: a prompt plus
``max_tokens`` beyond it is a 400 ``context_length_exceeded`` (without ``max_tokens`` the
default shrinks to fit, as in vLLM), and so is a prompt over ``--max-prompt-tokens``. A prompt
whose text is too long to fit even at the longest token of the vocabulary is refused by the
request handler before it is tokenised (:meth:`ServeEngine.check_text_length`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rmkit.errors import RmkitError
from rmkit.generation.base import SamplingParams
from rmkit.serve.lora import AdapterManager
from rmkit.serve.protocol import ApiError, Limits
from rmkit.serve.worker import Job, ModelWorker

log = logging.getLogger(__name__)

FALLBACK_CONTEXT = 32_768  # prompt-token limit when neither the config nor the tokenizer says


@dataclass
class ChatWork:
    """One chat request for the worker: a conversation and how to sample it."""

    conv: list[dict]
    params: SamplingParams
    top: int
    adapter: str | None
    explicit_max: bool
    stream: bool = False
    prompt_ids: list[int] | None = None

    def call_params(self) -> SamplingParams:
        """The parameters of the generate call: one sample for greedy unseeded requests."""
        p = self.params
        return dataclasses.replace(p, n=1) if p.greedy and p.seed is None else p

    def key(self) -> Any:
        if self.params.seed is not None:
            return None
        return (self.adapter, self.call_params(), self.top)


class ServeEngine:
    """The served model and its worker (see the module docstring)."""

    def __init__(
        self,
        loaded: Any,
        *,
        served_name: str,
        aliases: tuple[str, ...] = (),
        batch_size: int = 16,
        enable_lora: bool = False,
        lora_root: str | None = None,
        max_loras: int = 4,
        max_queue: int = 256,
        enable_weight_reload: bool = False,
        weights_root: str | None = None,
        merge_lora: bool = False,
        logprobs_mode: str = "raw_logprobs",
        limits: Limits | None = None,
    ):
        from pathlib import Path

        from rmkit.generation.hf import HFBackend

        self.loaded, self.served_name = loaded, served_name
        self.names = {served_name, *aliases}
        self.backend = HFBackend(loaded, batch_size=batch_size, logprobs_mode=logprobs_mode)
        self.merge_lora = merge_lora
        self.is_vision = bool(loaded.is_vision)
        # decoding for responses happens on the event loop: a tokenizer of its own, so it never
        # shares the Rust object the worker is tokenising with
        self.tokenizer = copy.deepcopy(loaded.tokenizer)
        self.end_ids = {*self.backend.stop_ids, self.backend.pad_id}
        self.context = context_length(loaded)
        self.limits = limits or Limits()
        caps = [c for c in (self.limits.max_prompt_tokens, self.context) if c is not None]
        self.prompt_limit = min(caps) if caps else FALLBACK_CONTEXT
        self.max_token_chars = max_token_chars(self.tokenizer)
        self.created = int(time.time())
        self.lora_enabled = enable_lora
        self.lora = AdapterManager(
            loaded, self.backend, reserved=self.names, root=lora_root, max_loras=max_loras
        )
        self.worker = ModelWorker(self._run, max_queue=max_queue, capacity=batch_size)
        self.weight_reload = enable_weight_reload
        self.weights_root = Path(weights_root).expanduser().resolve() if weights_root else None

    def _merged(self, adapter: str | None):
        """With ``--merge-lora``, a request through a runtime adapter runs with it folded into
        a copy of the weights (faster decoding; the weights come back bit for bit)."""
        import contextlib

        from rmkit.models.lora import merged_lora

        if not (self.merge_lora and adapter is not None):
            return contextlib.nullcontext()
        return merged_lora(self.loaded.model, True)

    def reload_weights(self, path: str) -> None:
        """Replace the served weights from a ``save_pretrained`` folder (worker thread)."""
        from rmkit.serve.weights import reload_weights

        if self.lora.adapters:
            raise ApiError(400, "unload the runtime LoRA adapters before reloading weights")
        reload_weights(self.loaded.model, path, self.weights_root)

    # ------------------------------------------------------------------ request side

    def resolve_model(self, name: str | None) -> str | None:
        """The adapter a request's ``model`` names (None: the base model); 404 if unknown."""
        if name is None or name in self.names:
            return None
        if name in self.lora.adapters:
            return name
        raise ApiError(
            404,
            f"The model '{name}' does not exist (serving '{self.served_name}')",
            "model",
            code="model_not_found",
        )

    def model_ids(self) -> tuple[list[str], list[str]]:
        return [self.served_name], self.lora.names()

    def chat_job(self, work: ChatWork) -> Job:
        rows = 1 if work.params.greedy else work.params.n
        return Job("chat", work, key=work.key(), rows=rows).bind()

    def call_job(self, fn: Callable[[], Any]) -> Job:
        return Job("call", fn).bind()

    # ------------------------------------------------------------------ worker side

    def _run(self, batch: list[Job]) -> None:
        if batch[0].kind == "call":
            job = batch[0]
            job.begin()
            job.emit("start")
            try:
                result = job.payload()
            except Exception as e:
                _log_unexpected(e)
                job.emit("error", e)
            else:
                job.t_end = time.perf_counter()
                job.emit("done", result)
            return
        groups: dict[Any, list[Job]] = {}
        for job in batch:
            work: ChatWork = job.payload
            try:
                work.prompt_ids = self.prompt_ids(work.conv)
                work.params = self._fit_context(work)
            except Exception as e:
                _log_unexpected(e)
                job.emit("error", e)
                continue
            key = work.key()
            groups.setdefault(id(job) if key is None else key, []).append(job)
        for group in groups.values():
            self._generate(group)

    def check_text_length(self, chars: int, param: str) -> None:
        """400 when ``chars`` characters of request text cannot fit the prompt limit even if
        every token were the vocabulary's longest (checked before anything is tokenised)."""
        if chars > self.prompt_limit * self.max_token_chars:
            raise self._too_long(
                f"the request holds {chars:,} characters of text: more than "
                f"{self.prompt_limit:,} tokens of at most {self.max_token_chars} characters",
                param,
            )

    def _too_long(self, what: str, param: str) -> ApiError:
        if self.limits.max_prompt_tokens is not None and (
            self.context is None or self.limits.max_prompt_tokens < self.context
        ):
            message = self.limits.over("max_prompt_tokens", what)
        else:
            ctx = self.context or FALLBACK_CONTEXT
            message = f"{what}; this model's maximum context length is {ctx:,} tokens"
        return ApiError(400, message, param, code="context_length_exceeded")

    def prompt_ids(self, conv: list[dict]) -> list[int]:
        from rmkit.models.chat import prepare_inputs

        return prepare_inputs(self.loaded, [conv])["input_ids"][0].tolist()

    def _fit_context(self, work: ChatWork) -> SamplingParams:
        ctx, n_prompt, want = self.context, len(work.prompt_ids or []), work.params.max_new_tokens
        if n_prompt > self.prompt_limit:
            raise self._too_long(f"the messages are {n_prompt:,} prompt tokens", "messages")
        if ctx is None or n_prompt + want <= ctx:
            return work.params
        if work.explicit_max or n_prompt >= ctx:
            raise ApiError(
                400,
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{n_prompt + want} tokens ({n_prompt} in the messages, {want} in the "
                "completion). Please reduce the length of the messages or completion.",
                "messages",
                code="context_length_exceeded",
            )
        return dataclasses.replace(work.params, max_new_tokens=ctx - n_prompt)

    def _generate(self, group: list[Job]) -> None:
        first: ChatWork = group[0].payload
        call = first.call_params()
        per_conv = 1 if call.greedy else call.n
        for job in group:
            job.begin()
            job.emit("start", job.payload.prompt_ids)
        on_step = None
        if any(job.payload.stream for job in group):

            def on_step(first_row: int, tokens: list[int]) -> None:
                per_job: dict[int, list[tuple[int, int]]] = {}
                for row, token in enumerate(tokens, start=first_row):
                    per_job.setdefault(row // per_conv, []).append((row % per_conv, token))
                for index, items in per_job.items():
                    if group[index].payload.stream:
                        group[index].emit("tokens", items)

        try:
            with self.lora.active(first.adapter), self._merged(first.adapter):
                rows = self.backend.generate_detailed(
                    [job.payload.conv for job in group], call, top_logprobs=first.top,
                    on_step=on_step,
                )  # fmt: skip
        except Exception as e:
            _log_unexpected(e)
            for job in group:
                job.emit("error", e)
            return
        now = time.perf_counter()
        for job, samples in zip(group, rows, strict=True):
            n = job.payload.params.n
            job.t_end = now
            job.emit("done", samples if len(samples) == n else [samples[0]] * n)

    # ------------------------------------------------------------------ /v1/score

    def score(self, inputs: dict[str, Any], adapter: str | None) -> dict[str, Any]:
        """Verdict probabilities (worker thread); 400 when the request is over the limits."""
        from rmkit.models.chat import prepare_inputs
        from rmkit.prompts import get_template, render_judge_messages
        from rmkit.serve.score import score_record

        template = get_template(inputs["template"])
        messages = render_judge_messages(inputs["record"], inputs["order"], template)
        n_prompt = len(prepare_inputs(self.loaded, [messages])["input_ids"][0])
        extra = inputs["max_reasoning_tokens"] if inputs["reasoning"] else 0
        if n_prompt > self.prompt_limit:
            raise self._too_long(f"the judge prompt is {n_prompt:,} tokens", "prompt")
        if self.context is not None and n_prompt + extra + 16 > self.context:
            raise ApiError(
                400,
                f"the judge prompt has {n_prompt} tokens; with the answer (and reasoning) it "
                f"does not fit the model's context of {self.context} tokens",
                "prompt",
                code="context_length_exceeded",
            )
        with self.lora.active(adapter):
            return score_record(self.loaded, self.backend, **inputs)


_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(loaded: Any) -> int | None:
    """The model's context in tokens, or None when unknown: the config's
    ``max_position_embeddings`` (or ``n_positions``, ...; the text config's for a
    vision-language model), else the tokenizer's ``model_max_length`` when it is a real value
    (transformers sets a huge placeholder when the tokenizer does not know)."""
    from rmkit.generation.prefix_decode import causal_lm

    config = getattr(causal_lm(loaded.model), "config", None)
    for c in (getattr(config, "text_config", None), config):
        for key in _CONTEXT_KEYS:
            value = getattr(c, key, None) if c is not None else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    value = getattr(loaded.tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 10**8:
        return value
    return None


def max_token_chars(tokenizer: Any) -> int:
    """An upper bound of the characters of text one token covers: the longest vocabulary entry
    (byte-level and SentencePiece entries are at least as long as the text they stand for)."""
    try:
        vocab = tokenizer.get_vocab()
        longest = max((len(t) for t in vocab), default=0)
    except Exception:  # noqa: BLE001 - an unusual tokenizer: no pre-check
        return 10**9
    return max(longest, 1)


def _log_unexpected(e: Exception) -> None:
    if not isinstance(e, (ApiError, RmkitError)):
        log.error("model work failed", exc_info=e)
