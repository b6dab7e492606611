"""Local batched generation with a Hugging Face model (the default backend).

How it works:

- Conversations are processed in chunks of ``max(1, batch_size // n)``; all ``n`` samples of
  every conversation of a chunk (``<= batch_size`` sequences, or ``n`` when ``n > batch_size``)
  are decoded together, by the shared-prompt decoder (see ``decoder`` below) or by one
  ``model.generate`` call on the chunk's conversations each repeated ``n`` times, left-padded by
  :func:`rmkit.models.chat.prepare_inputs`.
- ``temperature == 0`` is greedy decoding; otherwise sampling from the distribution shaped by
  ``temperature``, ``top_k`` and ``top_p`` (in that order, as ``generate`` applies them).
  ``repetition_penalty`` applies to both, before temperature. Every one of these comes from
  :class:`~rmkit.generation.base.SamplingParams`, never from the checkpoint's
  ``generation_config.json`` (Qwen2.5 instruct models ship ``repetition_penalty: 1.05``,
  ``top_k: 20``): the defaults (1.0, 0) switch them off. The backend logs once, at INFO, when
  the checkpoint's values differ from what it samples with by default.
- ``seed`` makes results repeat: chunk *k* runs under ``torch.manual_seed(seed + k)`` inside a
  forked RNG (the caller's RNG state is left untouched). Results depend on ``batch_size``
  (padding and batch composition), so repeat runs must use the same one.
- Generation stops at the chat template's end-of-turn token (``<|im_end|>`` for ChatML, and
  the other common ones found in the vocabulary: :func:`rmkit.models.chat.end_of_turn_ids`) or
  the tokenizer's EOS, and at ``params.stop`` strings (matched in the generated text only; the
  returned text ends before the stop string, the token ids include the tokens that formed it). ``finish_reason`` is "stop" then, "length" otherwise.
- Log-probabilities are the log-softmax of the model's logits for the chosen tokens at
  temperature 1, *before* the repetition penalty, temperature, top-k and top-p are applied (the
  model's own distribution; ``logprobs_mode="raw_logprobs"``, vLLM's default), recorded step by
  step by an identity logits processor so the full ``(batch, steps, vocab)`` logits are never
  stored. With ``logprobs_mode="processed_logprobs"`` (vLLM's mode of that name) they are taken
  *after* all of them: the distribution the tokens were actually sampled from. (The repetition
  penalty is therefore rmkit's own processor, run after the recorder, not ``generate``'s.)
- ``stats`` keeps counters and a time breakdown: ``prepare_s`` (chat template, tokenising,
  image processing), ``prefill_s`` (until the first new token's logits) and ``decode_s``.
- ``decoder="auto"`` (the default) decodes text-only Llama/Qwen2 models with
  :mod:`rmkit.generation.prefix_decode`: each distinct prompt is run once and its key/value
  cache shared by its ``n`` completions (no padding, no per-step cache copies), and sampling
  draws from the processed distribution by inverse CDF (one uniform number per row instead of
  ``torch.multinomial``'s exponential draw over the whole vocabulary). Same repetition
  penalty, temperature, top-k, top-p, stop and log-prob semantics; other models, image inputs
  and generation configs with extra logits processors go through ``model.generate``, as does
  ``decoder="generate"``.
  ``stats["decoder"]`` says which ran last.

The dtype (fp32/bf16) and quantization come from how the model was loaded.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any

from rmkit.generation.base import Completion, SamplingParams
from rmkit.generation.steps import (
    RepetitionPenalty,
    StepRecorder,
    StopStrings,
    sample_categorical,
    warpers,
)

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One generated sequence with per-token detail (what the server needs).

    ``token_ids`` include the end-of-turn token when the model stopped on it; ``token_logprobs``
    has one entry per token id; ``top_logprobs[t]`` lists ``(token_id, logprob)`` of the most
    likely tokens at step ``t``.
    """

    text: str
    token_ids: list[int]
    finish_reason: str
    token_logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None

    def to_completion(self) -> Completion:
        lps = self.token_logprobs
        mean = sum(lps) / len(lps) if lps else None
        return Completion(
            self.text,
            len(self.token_ids),
            mean,
            self.finish_reason,
            list(self.token_ids),
            token_logprobs=list(lps) if lps is not None else None,
        )


DECODERS = ("auto", "generate")
LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs")


class HFBackend:
    """Generate with a loaded local model (see the module docstring)."""

    def __init__(
        self,
        loaded: Any,
        batch_size: int = 16,
        decoder: str = "auto",
        logprobs_mode: str = "raw_logprobs",
    ):
        from rmkit.errors import RmkitError

        if not isinstance(batch_size, int) or batch_size < 1:
            raise RmkitError(f"batch_size must be an integer >= 1 (got {batch_size!r})")
        if decoder not in DECODERS:
            raise RmkitError(f"decoder must be one of {', '.join(DECODERS)} (got {decoder!r})")
        if logprobs_mode not in LOGPROBS_MODES:
            raise RmkitError(
                f"logprobs_mode must be one of {', '.join(LOGPROBS_MODES)} (got {logprobs_mode!r})"
            )
        self.loaded, self.batch_size, self.decoder = loaded, batch_size, decoder
        self.logprobs_mode = logprobs_mode
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        from rmkit.models.chat import end_of_turn_ids

        self.stop_ids = end_of_turn_ids(loaded)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]
        log_checkpoint_sampling(self.model)
        self.stats: dict[str, Any] = {
            "calls": 0,
            "sequences": 0,
            "prompt_tokens": 0,
            "generated_tokens": 0,
            "prepare_s": 0.0,
            "prefill_s": 0.0,
            "decode_s": 0.0,
            "decoder": None,
        }

    def generate(
        self, conversations: list[list[dict]], params: SamplingParams
    ) -> list[list[Completion]]:
        """``params.n`` completions per conversation, in order."""
        return [
            [s.to_completion() for s in row]
            for row in self.generate_detailed(conversations, params)
        ]

    def generate_detailed(
        self,
        conversations: list[list[dict]],
        params: SamplingParams,
        top_logprobs: int = 0,
        on_step: Any = None,
    ) -> list[list[Sample]]:
        """Like :meth:`generate` but with per-token log-probs (and the ``top_logprobs`` best
        alternatives per step) when ``params.logprobs`` is set.

        ``on_step(first_row, tokens)``, if given, is called before every decoding step after the
        first with the token each row chose at the step before (for streaming): ``tokens[i]``
        belongs to row ``first_row + i``, rows being conversation-major (``conversation * n +
        sample``, with ``n = 1`` for greedy calls). A finished row reports the pad token; the
        last step's tokens arrive only with the returned samples, which stay authoritative.

        Greedy decoding is deterministic, so with ``temperature == 0`` each conversation is
        generated once and its sample repeated ``n`` times. A model in training mode is switched
        to eval mode for the call (no dropout while sampling) and back afterwards.
        """
        copies = params.n
        if params.greedy and params.n > 1:
            params = dataclasses.replace(params, n=1)
        per_chunk = max(1, self.batch_size // params.n)
        top = top_logprobs if params.logprobs else 0
        out: list[list[Sample]] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for k, start in enumerate(range(0, len(conversations), per_chunk)):
                chunk = conversations[start : start + per_chunk]
                seed = None if params.seed is None else params.seed + k
                tap = None if on_step is None else _StepTap(on_step, start * params.n)
                samples = self._generate_chunk(chunk, params, seed, top, tap)
                out.extend(samples[i * params.n : (i + 1) * params.n] for i in range(len(chunk)))
        finally:
            if was_training:
                self.model.train()
        if copies != params.n:
            out = [[copy.deepcopy(row[0]) for _ in range(copies)] for row in out]
        d = self.stats["decode_s"]
        self.stats["decode_tokens_per_s"] = (
            round(self.stats["generated_tokens"] / d, 2) if d > 0 else None
        )
        return out

    def close(self) -> None:
        """Drop the references to the model (the caller owns the loaded model itself)."""
        self.model = self.loaded = None
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ internals

    def _generation_config(self, params: SamplingParams):
        cfg = copy.deepcopy(self.model.generation_config)
        cfg.max_new_tokens, cfg.max_length = params.max_new_tokens, None
        cfg.eos_token_id, cfg.pad_token_id = list(self.stop_ids), self.pad_id
        cfg.num_return_sequences, cfg.num_beams = 1, 1
        cfg.return_dict_in_generate = True
        cfg.output_scores = cfg.output_logits = False
        if params.greedy:
            cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k = False, None, None, None
        else:
            cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k = (
                True,
                float(params.temperature),
                float(params.top_p),
                int(params.top_k),
            )
        # never the checkpoint's: params.repetition_penalty is applied by rmkit's own processor
        # (after the log-prob recorder, see _penalty), so generate must not apply one too
        cfg.repetition_penalty = 1.0
        cfg.stop_strings = None
        return cfg

    def _penalty(
        self, params: SamplingParams, prompts: list[list[int]], start: int
    ) -> RepetitionPenalty | None:
        """The repetition-penalty processor of a call (None at 1.0): ``prompts`` per row,
        ``start`` prompt columns in the ``input_ids`` it sees (see :class:`RepetitionPenalty`)."""
        if params.repetition_penalty == 1.0:
            return None
        return RepetitionPenalty(params.repetition_penalty, prompts, start)

    def _generate_chunk(
        self,
        chunk: list[list[dict]],
        params: SamplingParams,
        seed: int | None,
        top_k: int,
        tap: _StepTap | None = None,
    ) -> list[Sample]:
        import torch

        from rmkit.models.chat import prepare_inputs

        t0 = time.perf_counter()
        device = self.model.device
        gen_config = self._generation_config(params)
        reason = "decoder='generate'"
        if self.decoder == "auto":
            from rmkit.generation.prefix_decode import unsupported_reason

            reason = unsupported_reason(self.model, gen_config)
        inputs = prepare_inputs(self.loaded, chunk if reason is None else _repeat(chunk, params.n))
        if reason is None and set(inputs) - {"input_ids", "attention_mask"}:
            reason = "image inputs"
            inputs = prepare_inputs(self.loaded, _repeat(chunk, params.n))
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
        prompt_len = inputs["input_ids"].shape[1]
        prompts = None  # each row's unpadded prompt ids: the shared decoder's input, the penalty's
        if reason is None or params.repetition_penalty != 1.0:
            mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
            ids = inputs["input_ids"]
            prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
        if reason is None:  # one prompt per conversation; rows are conversation-major
            penalty = self._penalty(params, _repeat(prompts, params.n), 0)
        else:  # input_ids already repeat each conversation n times
            penalty = self._penalty(params, prompts, prompt_len)
        processed = self.logprobs_mode == "processed_logprobs"
        chain = ([penalty] if penalty is not None else []) + warpers(gen_config)
        recorder = StepRecorder(params.logprobs, top_k, chain if processed else None)
        with torch.inference_mode(), _seeded(seed, device):
            if reason is None:
                stops = StopStrings(self.tokenizer, params.stop, 0) if params.stop else None
                t1 = time.perf_counter()
                hook = recorder if tap is None else tap.wrap(recorder, 0)
                gen = self._decode_shared(prompts, params, hook, stops, gen_config, penalty)
                prompt_tokens = sum(len(p) for p in prompts) * params.n
            else:
                log.debug("model.generate runs this call: %s", reason)
                stops = (
                    StopStrings(self.tokenizer, params.stop, prompt_len) if params.stop else None
                )
                t1 = time.perf_counter()
                hook = recorder if tap is None else tap.wrap(recorder, prompt_len)
                gen = self._generate_hf(inputs, gen_config, hook, stops, penalty)[:, prompt_len:]
                prompt_tokens = (
                    int(inputs["attention_mask"].sum())
                    if "attention_mask" in inputs
                    else prompt_len * gen.shape[0]
                )
        t2 = time.perf_counter()
        chosen, top = recorder.finish(gen[:, -1])
        done_at = stops.done_at if stops else {}
        samples = [
            self._sample(
                ids,
                chosen[i] if chosen is not None and params.logprobs else None,
                top[i] if top is not None else None,
                params,
                done_at.get(i),
            )
            for i, ids in enumerate(gen.tolist())
        ]
        first = recorder.first_call or t2
        st = self.stats
        st["decoder"] = "prefix" if reason is None else "generate"
        st["calls"] += 1
        st["sequences"] += len(samples)
        st["prompt_tokens"] += prompt_tokens
        st["generated_tokens"] += sum(len(s.token_ids) for s in samples)
        st["prepare_s"] += t1 - t0
        st["prefill_s"] += first - t1
        st["decode_s"] += t2 - first
        log.debug(
            "generated %d sequence(s) x <= %d tokens in %.2fs", len(samples), gen.shape[1], t2 - t0
        )
        return samples

    def _generate_hf(self, inputs: dict, gen_config, recorder, stops, penalty=None):
        from transformers import LogitsProcessorList, StoppingCriteriaList

        # generate runs these after its own processors and before its warpers (temperature,
        # top-k, top-p): the recorder sees the raw logits, the penalty comes before temperature
        processors = [recorder] + ([penalty] if penalty is not None else [])
        out = self.model.generate(
            **inputs,
            generation_config=gen_config,
            logits_processor=LogitsProcessorList(processors),
            stopping_criteria=StoppingCriteriaList([stops] if stops else []),
        )
        return out.sequences

    def _decode_shared(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        recorder,
        stops,
        gen_config,
        penalty=None,
    ):
        """``params.n`` rows per prompt through :class:`PrefixDecoder`, choosing tokens as
        ``generate`` would: recorder, repetition penalty, temperature, top-k, top-p, then
        greedy or a sample; a finished row gets the pad token."""
        import torch

        from rmkit.generation.prefix_decode import PrefixDecoder

        processors = ([penalty] if penalty is not None else []) + warpers(gen_config)
        stop_ids = torch.tensor(self.stop_ids, device=self.model.device)
        state: dict[str, Any] = {}

        def select(logits, generated):
            scores = recorder(generated, logits)
            for warp in processors:
                scores = warp(generated, scores)
            if params.greedy:
                tokens = scores.argmax(dim=-1)
            else:
                tokens = sample_categorical(torch.softmax(scores, dim=-1))
            done = state.get("done")
            if done is not None:
                tokens = tokens.masked_fill(done, self.pad_id)
            now = torch.isin(tokens, stop_ids)
            if stops is not None:
                now |= stops(torch.cat([generated, tokens[:, None]], dim=1), scores)
            state["done"] = now if done is None else done | now
            return tokens, bool(state["done"].all())

        return PrefixDecoder(self.model).run(prompts, params.n, params.max_new_tokens, select)

    def _sample(
        self,
        ids: list[int],
        logprobs: list[float] | None,
        top: list | None,
        params: SamplingParams,
        stopped_at: int | None,
    ) -> Sample:
        """Cut one generated row at its end and decode it (``stopped_at``: tokens generated when
        a stop string appeared, if one did)."""
        stop_at = next((t for t, tok in enumerate(ids) if tok in self.stop_ids), None)
        finish = "length"
        if stop_at is not None and (stopped_at is None or stop_at < stopped_at):
            ids, finish = ids[: stop_at + 1], "stop"
        elif stopped_at is not None:
            ids, finish = ids[:stopped_at], "stop"
        body = [t for t in ids if t not in self.stop_ids]
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        cut = [text.find(s) for s in params.stop if s in text]
        if cut:
            text = text[: min(cut)]
        n = len(ids)
        return Sample(
            text,
            ids,
            finish,
            logprobs[:n] if logprobs is not None else None,
            top[:n] if top is not None else None,
        )


def checkpoint_sampling_note(model: Any) -> str | None:
    """A one-line note when the checkpoint's ``generation_config`` sets a repetition penalty or
    top-k that rmkit does not use by default (it samples with ``SamplingParams``' values: see
    :class:`~rmkit.generation.base.SamplingParams`); None when it sets neither."""
    gc = getattr(model, "generation_config", None)
    try:
        given = gc.to_diff_dict()  # what the checkpoint sets (not transformers' defaults)
    except Exception:  # no generation config, or a foreign object
        return None
    found = []
    penalty = given.get("repetition_penalty")
    if isinstance(penalty, (int, float)) and penalty != 1.0:
        found.append(f"repetition_penalty={penalty:g}")
    top_k = given.get("top_k")
    if isinstance(top_k, int) and top_k > 0:
        found.append(f"top_k={top_k}")
    if not found:
        return None
    return (
        f"the checkpoint's generation_config sets {', '.join(found)}; rmkit samples with its own "
        "sampling settings instead (repetition_penalty 1.0 and top_k 0 unless set)"
    )


_NOTED: weakref.WeakSet = weakref.WeakSet()


def log_checkpoint_sampling(model: Any) -> None:
    """Log :func:`checkpoint_sampling_note` at INFO, once per model object."""
    try:
        if model in _NOTED:
            return
        _NOTED.add(model)
    except TypeError:  # not weak-referenceable: log every time
        pass
    note = checkpoint_sampling_note(model)
    if note:
        log.info("%s", note)


class _StepTap:
    """Wraps a chunk's step recorder (an identity logits processor) to pass each step's
    previous tokens to ``on_step(first_row, tokens)`` (see :meth:`HFBackend.generate_detailed`)."""

    def __init__(self, on_step: Any, first_row: int):
        self.on_step, self.first_row = on_step, first_row
        self.recorder: Any = None
        self.prompt_len = 0

    def wrap(self, recorder: Any, prompt_len: int) -> _StepTap:
        self.recorder, self.prompt_len = recorder, prompt_len
        return self

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] > self.prompt_len:
            self.on_step(self.first_row, input_ids[:, -1].tolist())
        return self.recorder(input_ids, scores)


def _repeat(items: list, n: int) -> list:
    """Each item ``n`` times in a row."""
    return [x for x in items for _ in range(n)]


def place_model(loaded: Any, device: str = "auto") -> None:
    """Move a loaded model for inference: "auto" (CUDA when available), "cpu" or "cuda".

    A 4-bit model stays where bitsandbytes put it. Also switches the model to eval mode.
    """
    import torch

    from rmkit.errors import RmkitError

    if device not in ("auto", "cpu", "cuda"):
        raise RmkitError(f"device must be auto, cpu or cuda (got {device!r})")
    if device == "cuda" and not torch.cuda.is_available():
        raise RmkitError("device 'cuda': no CUDA device is available", hint="use device 'cpu'")
    want = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    if getattr(loaded, "quantization", None) is None:
        loaded.model.to(want)
    loaded.model.eval()
    log.debug("model on %s", next(loaded.model.parameters()).device)


@contextlib.contextmanager
def _seeded(seed: int | None, device: Any):
    """Run under ``torch.manual_seed(seed)`` without disturbing the caller's RNG (no-op for None)."""
    import torch

    if seed is None:
        yield
        return
    devices = [device.index or 0] if getattr(device, "type", "cpu") == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
