"""Pairwise (or N-way) scoring with a local judge: the probability of each verdict.

Method ("answer likelihood"). The record is rendered with a judge template
(:func:`rmkit.prompts.render_judge_messages`). The assistant turn is then teacher-forced up to
the answer position with a fixed prefix:

- without reasoning (default): the template's blocks before ``<think>`` (``<type>`` with the
  record's task type, an empty ``<caption>``), then an *empty* think block and the answer tag:
  ``<think></think><answer>``;
- with ``reasoning=True``: the judge first writes its reasoning greedily (stopping at
  ``</think>``, at most ``max_reasoning_tokens``), and the prefix is that text followed by
  ``</think><answer>``.

For each shown position *k* the continuation ``answer_k + "</answer>"`` (``answer_k`` from
``template.answers(n)``, e.g. "1", "2" or "Answer 1 is better") is scored after one forward pass
over the prompt, whose key/value cache every continuation shares (:func:`continuation_logprobs`): ``s_k = sum log p(token | everything before it)`` over the tokens after the longest token
prefix all continuations share (that shared part is conditioned on, not scored). Closing the tag
makes the score cover the whole answer, so "1" and "10" are distinguished. The probabilities are
``softmax(s)`` over the candidates: the judge's distribution restricted to the valid answers.
For one-token answers ``s_k`` is the log-probability of answer token *k* right after
``<answer>`` plus that of the closing tag after it.
"""

from __future__ import annotations

import math
from typing import Any

from rmkit.errors import RmkitError


def softmax(scores: list[float]) -> list[float]:
    """``exp(s_k - logsumexp(s))`` for a list of log-scores (length K -> length K, sums to 1)."""
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def common_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the longest prefix shared by every sequence."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return n


def answer_prefix(template: Any, task: str, reasoning: str | None) -> str:
    """The assistant text forced before the answer (see the module docstring)."""
    if template.spec.answer_style != "tag":
        raise RmkitError(
            f"template '{template.name}' does not write its verdict in <answer> tags",
            hint="/v1/score supports tag-style templates such as 'default'",
        )
    head = ""
    if template.needs_type:
        head += f"<type>{template.type_name(task) or task}</type>"
    if template.needs_caption:
        head += "<caption></caption>"
    if not template.needs_think:
        return head + "<answer>"
    if reasoning is None:
        return head + "<think></think><answer>"
    if "<think>" in reasoning:
        return reasoning + "</think><answer>"
    return head + "<think>" + reasoning + "</think><answer>"


def continuation_logprobs(
    loaded: Any, conversation: list[dict], continuations: list[list[int]]
) -> list[float]:
    """Summed log-probability of each token continuation after the chat prompt.

    ``conversation``: the judge messages (a generation prompt is added); ``continuations``: K
    token-id lists. Tokens shared by all K at the start are conditioned on, not scored.
    Returns K floats.

    Memory does not grow with K times the prompt: the prompt (plus the shared tokens) runs
    **once** (batch 1, no padding) and keeps its key/value cache; each continuation's own
    tokens then run on that cache, which is cut back to the prompt after each one. Inputs with
    images (where positions depend on the image layout) run each continuation as one
    unpadded row of its own instead: memory is that of one row, whatever K.
    """
    from rmkit.models.chat import prepare_inputs

    shared = common_prefix_len(continuations)
    inputs = prepare_inputs(loaded, [conversation])
    text_only = set(inputs) <= {"input_ids", "attention_mask"}
    if text_only:
        try:
            return _cached_scores(loaded, inputs["input_ids"], continuations, shared)
        except TypeError:  # a model whose forward takes no cache: one row per continuation
            pass
    return [_row_score(loaded, inputs, cont, shared) for cont in continuations]


def _forward(model: Any, keep: int | None = None, **kw: Any) -> Any:
    if keep is not None:
        try:
            return model(**kw, logits_to_keep=keep)
        except TypeError:  # a model without logits_to_keep
            pass
    return model(**kw)


def _cached_scores(
    loaded: Any, prompt_ids: Any, continuations: list[list[int]], shared: int
) -> list[float]:
    import inspect

    import torch

    from rmkit.generation.prefix_decode import causal_lm

    model = loaded.model
    params = inspect.signature(causal_lm(model).forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers >= 5.x: cache
    device = next(model.parameters()).device
    head = torch.tensor([continuations[0][:shared]], dtype=prompt_ids.dtype)
    ids = torch.cat([prompt_ids, head], dim=1).to(device)
    length = ids.shape[1]
    with torch.inference_mode():
        out = _forward(model, 1, input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if cache is None or not hasattr(cache, "crop"):
            raise TypeError("no croppable cache")
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        del out
        scores = []
        for cont in continuations:
            rest = cont[shared:]
            if not rest:
                scores.append(0.0)
                continue
            total = float(first[rest[0]])
            if len(rest) > 1:
                step = torch.tensor([rest[:-1]], dtype=ids.dtype, device=device)
                mask = torch.ones((1, length + step.shape[1]), dtype=ids.dtype, device=device)
                o = model(input_ids=step, attention_mask=mask, use_cache=True, **{cache_kw: cache})
                logp = torch.log_softmax(o.logits[0].float(), dim=-1)
                total += sum(float(logp[j, rest[j + 1]]) for j in range(len(rest) - 1))
                cache.crop(-(len(rest) - 1))  # back to the prompt (negative: tokens to drop)
            scores.append(total)
    return scores


def _row_score(loaded: Any, inputs: dict, cont: list[int], shared: int) -> float:
    """One continuation scored on a row of its own (prompt + continuation, no padding)."""
    import torch

    ids = inputs["input_ids"]
    p, m = ids.shape[1], len(cont)
    device = next(loaded.model.parameters()).device
    batch: dict[str, Any] = {}
    for name, t in inputs.items():
        if torch.is_tensor(t) and t.dim() >= 2 and t.shape[:2] == ids.shape:  # sequence-aligned
            ext = torch.zeros((1, m) + tuple(t.shape[2:]), dtype=t.dtype)
            batch[name] = torch.cat([t, ext], dim=1)
        else:
            batch[name] = t
    batch["input_ids"][0, p:] = torch.tensor(cont, dtype=ids.dtype)
    if "attention_mask" in batch:
        batch["attention_mask"][0, p:] = 1
    batch = {n: t.to(device) if hasattr(t, "to") else t for n, t in batch.items()}
    with torch.inference_mode():
        logits = _forward(loaded.model, m + 1, **batch).logits
        logp = torch.log_softmax(logits[0, -(m + 1) :].float(), dim=-1)
    # position P-1+j predicts token j of the continuation
    return sum(float(logp[j, cont[j]]) for j in range(shared, m))


def score_record(
    loaded: Any,
    backend: Any,
    record: dict,
    order: list[int],
    template: str = "default",
    reasoning: bool = False,
    max_reasoning_tokens: int = 256,
) -> dict[str, Any]:
    """Verdict probabilities for ``record``'s candidates shown in ``order`` (module docstring).

    ``backend`` is the :class:`~rmkit.generation.hf.HFBackend` used for the reasoning step.
    Returns probabilities indexed by *candidate* (not shown position), the verdict (candidate
    index with the highest probability) and the details of the computation.
    """
    from rmkit.generation.base import SamplingParams
    from rmkit.prompts import get_template, render_judge_messages

    tpl = get_template(template)
    if tpl.is_pointwise:
        raise RmkitError(
            f"template '{tpl.name}' scores one candidate; /v1/score compares candidates",
            hint="use a pairwise template such as 'default'",
        )
    messages = render_judge_messages(record, order, tpl)
    answers = tpl.answers(len(order))
    thought, reasoning_tokens = None, 0
    if reasoning and tpl.needs_think:
        params = SamplingParams(
            temperature=0.0, max_new_tokens=max_reasoning_tokens, stop=("</think>",)
        )
        sample = backend.generate_detailed([messages], params)[0][0]
        thought, reasoning_tokens = sample.text, len(sample.token_ids)
    prefix = answer_prefix(tpl, record.get("task", "text"), thought)
    tok = loaded.tokenizer
    conts = [tok(prefix + a + "</answer>", add_special_tokens=False)["input_ids"] for a in answers]
    scores = continuation_logprobs(loaded, messages, conts)
    shown = softmax(scores)
    by_candidate = [0.0] * len(order)
    logprob_by_candidate = [0.0] * len(order)
    for pos, cand in enumerate(order):
        by_candidate[cand] = shown[pos]
        logprob_by_candidate[cand] = scores[pos]
    verdict = max(range(len(order)), key=lambda c: by_candidate[c])
    return {
        "object": "score",
        "template": tpl.name,
        "method": "answer-likelihood" + ("+reasoning" if thought is not None else ""),
        "order": list(order),
        "answers": answers,
        "verdict": verdict,
        "probability": by_candidate[verdict],
        "probabilities": by_candidate,
        "logprobs": logprob_by_candidate,
        "prefix": prefix,
        "reasoning": thought,
        "usage": {"completion_tokens": reasoning_tokens},
    }
