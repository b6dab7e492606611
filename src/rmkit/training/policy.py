"""Forward passes over (prompt, completion) sequences: micro-batches and token log-probs.

A micro-batch lays each sequence out as its prompt, left-padded to the longest prompt of the
micro-batch, followed by its completion, right-padded to the longest completion::

    [pad pad p p p p | c c c c pad]
    [p p p p p p p p | c c pad pad]

so the completion tokens occupy the same last ``T + 1`` logit positions in every row and the
forward pass only materialises those logits (``logits_to_keep``). Rotary position encodings
depend only on relative positions, so the left padding (masked out) does not change the
result. Vision tensors come from the same :func:`rmkit.models.chat.prepare_inputs` call that
builds the prompts, so image tokens and pixels stay paired.

**Shared prompts.** The completions of one prompt share it, and judge prompts (two candidate
answers) are long. For text models a micro-batch can instead run each distinct prompt once,
copy its key/value cache to the rows that continue it, and run only the completion tokens on
top (:func:`shared_prompt_logprobs`); gradients flow back through the copied cache into the
one prompt pass. Same math, a fraction of the tokens.

**Which distribution.** ``rl.policy_logprobs`` decides what the log-probs are of
(:func:`logprob_settings`): "temperature" (default; TRL, ms-swift, OpenRLHF) takes
softmax(logits / T); "sampler" takes the distribution the rollout sampler drew from -
repetition penalty, temperature, top-k, top-p
(:func:`rmkit.algorithms.losses.sampler_token_logprobs`), the prompt of each row being the
penalty's context. Old, reference and current log-probs all use the same one.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SamplerLogprobs:
    """Log-probs of the sampler's distribution (``rl.policy_logprobs: sampler``); passed where a
    log-prob temperature goes (see :func:`logprob_settings`)."""

    temperature: float
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0


def logprob_settings(rl) -> float | SamplerLogprobs:
    """What the loss's log-probs are taken under, from the RL section ``rl``.

    A float (a temperature) for ``policy_logprobs: temperature`` - the sampling temperature, or
    1 for greedy rollouts - and wherever the sampler's distribution is exactly that (no
    repetition penalty, top-k or top-p); otherwise a :class:`SamplerLogprobs`. For greedy
    rollouts only the repetition penalty applies (at temperature 1), as in ``generate``.
    """
    temperature = rl.temperature if rl.temperature > 0 else 1.0
    if getattr(rl, "policy_logprobs", "temperature") != "sampler":
        return temperature
    greedy = rl.temperature == 0
    spec = SamplerLogprobs(
        temperature,
        0 if greedy else int(getattr(rl, "top_k", 0)),
        1.0 if greedy else float(rl.top_p),
        float(getattr(rl, "repetition_penalty", 1.0)),
    )
    if spec.top_k == 0 and spec.top_p >= 1.0 and spec.repetition_penalty == 1.0:
        return temperature
    return spec


def sampling_notes(rl) -> list[tuple[int, str]]:
    """``(logging level, message)`` lines for the start of an RL run: the effective rollout
    sampling and the loss's log-probs, and a warning when they disagree about the repetition
    penalty (which ``policy_logprobs: temperature`` leaves out of the loss)."""
    import logging

    mode = getattr(rl, "policy_logprobs", "temperature")
    top_k = getattr(rl, "top_k", 0)
    penalty = getattr(rl, "repetition_penalty", 1.0)
    notes = [
        (
            logging.INFO,
            f"rollout sampling: temperature={rl.temperature:g} top_p={rl.top_p:g} "
            f"top_k={top_k or 'off'} repetition_penalty={penalty:g}; loss log-probs: {mode}",
        )
    ]
    if penalty != 1.0 and mode == "temperature":
        notes.append(
            (
                logging.WARNING,
                f"rl.repetition_penalty={penalty:g} shapes the rollouts, but the loss's log-probs "
                "(rl.policy_logprobs: temperature) leave it out, so they differ from the "
                "sampler's; set rl.policy_logprobs: sampler for the exact distribution",
            )
        )
    return notes


@dataclass
class MicroBatch:
    """``inputs`` for the model, ``tokens``/``mask`` (b, T) of the completions, ``rows``: their
    positions in the step's batch of sequences (this process)."""

    inputs: dict[str, Any]
    tokens: Any
    mask: Any
    rows: slice
    prompts: dict[str, Any] | None = None  # distinct prompts of the micro-batch (left-padded)
    group: Any = None  # (b,) row of ``prompts`` each sequence continues

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum())


def build_micro_batches(
    loaded,
    conversations: list[list[dict]],
    completions: list[list[int]],
    size: int,
    device,
    groups: list[int] | None = None,
    offset: int = 0,
) -> list[MicroBatch]:
    """Micro-batches of ``size`` sequences; ``conversations[i]`` is the prompt of sequence i,
    ``completions[i]`` its generated token ids (at least one each). With ``groups`` (the
    prompt index of each sequence; equal indices mean the same prompt) the distinct prompts
    of every micro-batch are also prepared for :func:`shared_prompt_logprobs`. ``offset``
    is added to each micro-batch's ``rows`` (the sequences given start there in the step)."""
    import torch

    from rmkit.models.chat import prepare_inputs

    pad = loaded.tokenizer.pad_token_id
    out = []
    for start in range(0, len(conversations), size):
        stop = min(start + size, len(conversations))
        prompts, group = None, None
        if groups is not None:
            distinct = list(dict.fromkeys(groups[start:stop]))
            first = {g: start + groups[start:stop].index(g) for g in distinct}
            prompts = prepare_inputs(loaded, [conversations[first[g]] for g in distinct])
            prompts = {k: v.to(device) for k, v in prompts.items()}
            group = torch.tensor([distinct.index(g) for g in groups[start:stop]], device=device)
        prompt = prepare_inputs(loaded, conversations[start:stop])
        comps = completions[start:stop]
        width = max(len(c) for c in comps)
        tokens = torch.full((len(comps), width), pad, dtype=torch.long)
        mask = torch.zeros((len(comps), width), dtype=torch.long)
        for i, ids in enumerate(comps):
            tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, : len(ids)] = 1
        inputs = dict(prompt)
        inputs["input_ids"] = torch.cat([prompt["input_ids"], tokens], dim=1)
        inputs["attention_mask"] = torch.cat([prompt["attention_mask"], mask], dim=1)
        for key in ("token_type_ids", "mm_token_type_ids"):
            if key in inputs:
                inputs[key] = torch.cat([prompt[key], torch.zeros_like(tokens)], dim=1)
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
        out.append(
            MicroBatch(
                inputs,
                tokens.to(device),
                mask.to(device),
                slice(offset + start, offset + stop),
                prompts,
                group,
            )
        )
    return out


def _accepts_logits_to_keep(model) -> bool:
    base = getattr(model, "module", model)  # DDP
    fwd = getattr(base, "get_base_model", lambda: base)().forward
    return "logits_to_keep" in inspect.signature(fwd).parameters


def _logprobs(logits, mb: MicroBatch, how: float | SamplerLogprobs):
    """The completion tokens' log-probs from their (b, T, V) logits: at a temperature, or
    under the sampler's distribution with each row's prompt as the penalty's context."""
    from rmkit.algorithms import sampler_token_logprobs, token_logprobs

    if not isinstance(how, SamplerLogprobs):
        return token_logprobs(logits, mb.tokens, how)
    width = mb.tokens.shape[1]
    prompt_len = mb.inputs["input_ids"].shape[1] - width
    return sampler_token_logprobs(
        logits, mb.tokens, mb.inputs["input_ids"][:, :prompt_len], how.temperature, how.top_k,
        how.top_p, how.repetition_penalty,
        context_mask=mb.inputs["attention_mask"][:, :prompt_len],
    )  # fmt: skip


def completion_logprobs(
    model, mb: MicroBatch, temperature: float | SamplerLogprobs = 1.0, shared: bool = False
):
    """log pi(c_t | prompt, c_<t) for the completion tokens of ``mb``: (b, T), float32.

    Logits are divided by ``temperature`` (the distribution the completions were sampled
    from, as far as temperature goes), or, given a :class:`SamplerLogprobs`, go through the
    sampler's whole transform (:func:`logprob_settings`). Padding positions hold garbage; use
    ``mb.mask``. ``shared`` runs each distinct prompt once (:func:`shared_prompt_logprobs`).
    """
    if shared and mb.prompts is not None:
        return shared_prompt_logprobs(model, mb, temperature)
    width = mb.tokens.shape[1]
    kwargs = {"use_cache": False}
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = width + 1
    logits = model(**mb.inputs, **kwargs).logits
    logits = logits[:, -(width + 1) : -1, :]
    return _logprobs(logits, mb, temperature)


def shared_prompt_logprobs(model, mb: MicroBatch, temperature: float | SamplerLogprobs = 1.0):
    """:func:`completion_logprobs` with each distinct prompt run once (text models).

    1. prompts (U, P) -> key/value cache and the last position's logits (which predict each
       completion's first token);
    2. the cache rows are copied to the b sequences (``index_select``: differentiable);
    3. completion tokens 0..T-2 run on top of the cache and predict tokens 1..T-1.
    Positions continue from P, as in the full (left-padded prompt + completion) layout.
    """
    import torch

    out = model(**mb.prompts, use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1:, :].index_select(0, mb.group)
    width = mb.tokens.shape[1]
    if width > 1:
        cache = out.past_key_values
        cache.reorder_cache(mb.group)
        mask = torch.cat([mb.prompts["attention_mask"].index_select(0, mb.group), mb.mask], dim=1)
        rest = model(
            input_ids=mb.tokens[:, :-1], attention_mask=mask[:, :-1], past_key_values=cache,
            use_cache=True,
        ).logits  # fmt: skip
        logits = torch.cat([logits, rest], dim=1)
    return _logprobs(logits, mb, temperature)


def reference_logprobs(
    policy,
    reference,
    batches: list[MicroBatch],
    temperature: float | SamplerLogprobs,
    shared: bool = False,
):
    """Reference-policy log-probs per micro-batch (no grad), in eval mode."""
    import torch

    out = []
    with torch.no_grad(), reference.active(policy) as ref_model:
        was_training = ref_model.training
        ref_model.eval()
        for mb in batches:
            out.append(completion_logprobs(ref_model, mb, temperature, shared))
        ref_model.train(was_training)
    return out


def old_logprobs(
    policy, batches: list[MicroBatch], temperature: float | SamplerLogprobs, shared: bool = False
):
    """The rollout policy's log-probs per micro-batch (no grad, current weights)."""
    import torch

    with torch.no_grad():
        return [completion_logprobs(policy, mb, temperature, shared) for mb in batches]


def micro_batch_parts(run, ro) -> list[list]:
    """This process's micro-batches, grouped by PPO mini-batch (``batch.prompts_per_update``
    prompts over all processes): part j holds this process's sequences of mini-batch j, so
    every optimizer step sees a disjoint share of the rollout batch, whole prompt groups."""
    cfg = run.cfg
    convs, ids = ro.sequence_conversations(), ro.token_ids()
    groups = [i // ro.group for i in range(len(ro.completions))] if run.share_prompts else None
    per_part = len(convs) // cfg.mini_batches
    parts = []
    for lo in range(0, len(convs), per_part):
        hi = lo + per_part
        parts.append(
            build_micro_batches(
                run.loaded,
                convs[lo:hi],
                ids[lo:hi],
                cfg.batch.micro_batch_per_device,
                run.accel.device,
                groups[lo:hi] if groups is not None else None,
                offset=lo,
            )  # fmt: skip
        )
    return parts


def behaviour_logprobs(mb, completions):
    """The engine's log-probs of a micro-batch's completion tokens, laid out like its mask
    ``(b, T)``; an error names the engine when it sent none."""
    import torch

    rows = completions[mb.rows]
    out = torch.zeros(mb.mask.shape, dtype=torch.float32, device=mb.mask.device)
    for i, c in enumerate(rows):
        if c.token_logprobs is None or len(c.token_logprobs) != len(c.token_ids):
            from rmkit.errors import RmkitError

            raise RmkitError(
                "asynchronous rollouts need the behaviour log-probs of every token, and the "
                "rollout engine sent none",
                hint="a server engine must return logprobs (vLLM and rmkit serve do)",
            )
        out[i, : len(c.token_logprobs)] = torch.tensor(c.token_logprobs)
    return out
