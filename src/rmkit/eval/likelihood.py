"""``method: likelihood`` for ``rmkit eval``: read the verdict off the judge's answer probabilities.

Instead of sampling a verdict, the assistant turn is teacher-forced up to the answer (the
template's fixed blocks, an empty think block, ``<answer>``: see
:func:`rmkit.serve.score.answer_prefix`) and every valid answer is scored:
``s_k = sum log p(answer_k tokens | prompt, prefix)``. The verdict is the shown position with the
highest score; ``softmax(s)`` is saved as the judge's probabilities. Every item gets a verdict
(nothing is unparsable), and the result does not depend on sampling, so it measures what a model
prefers even before it has learned the output format: a fair "before training" baseline.

Speed: when every answer is one token after the shared prefix (``"1"``/``"2"``, ``"A"``/``"B"``),
one forward pass over a left-padded batch of ``prompt + prefix`` rows gives all scores from the
last position's next-token distribution. Otherwise each item is scored with one forward pass
over K rows (:func:`rmkit.serve.score.continuation_logprobs`). The closing ``</answer>`` tag is
not part of the score in either path (the answer tokens are).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rmkit.errors import RmkitError


@dataclass
class ForcedCompletion:
    """The completion a likelihood verdict stands for (what a prediction line records)."""

    text: str
    finish_reason: str = "forced"
    n_tokens: int = 0


def answer_token_ids(tokenizer: Any, prefix: str, answers: list[str]) -> tuple[list[int], list]:
    """``(shared, tails)``: token ids of ``prefix + answer_k`` split into the part all answers
    share and each answer's own tokens (``tails[k]``, never empty)."""
    from rmkit.serve.score import common_prefix_len

    ids = [tokenizer(prefix + a, add_special_tokens=False)["input_ids"] for a in answers]
    n = common_prefix_len(ids)
    tails = [x[n:] for x in ids]
    if any(not t for t in tails):
        raise RmkitError(
            f"answers {answers!r}: one answer is a token prefix of another after {prefix!r}",
            hint="likelihood scoring needs answers that differ in their tokens",
        )
    return ids[0][:n], tails


def next_token_logprobs(loaded: Any, conversations: list[list[dict]], suffix: list[int]):
    """Log-probabilities (B, vocab) of the token after each ``conversation``'s generation prompt
    followed by the ``suffix`` token ids (one left-padded forward pass)."""
    import torch

    from rmkit.models.chat import prepare_inputs

    inputs = prepare_inputs(loaded, conversations)
    b = inputs["input_ids"].shape[0]
    if suffix:
        extra = torch.tensor([suffix] * b, dtype=inputs["input_ids"].dtype)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
        mask = inputs.get("attention_mask")
        if mask is not None:
            inputs["attention_mask"] = torch.cat([mask, torch.ones_like(extra)], dim=1)
    device = next(loaded.model.parameters()).device
    inputs = {n: t.to(device) if hasattr(t, "to") else t for n, t in inputs.items()}
    with torch.inference_mode():
        try:
            logits = loaded.model(**inputs, logits_to_keep=1).logits
        except TypeError:  # a model without logits_to_keep
            logits = loaded.model(**inputs).logits
        return torch.log_softmax(logits[:, -1].float(), dim=-1).cpu()


def score_conversations(
    loaded: Any, conversations: list[list[dict]], prefix: str, answers: list[str]
) -> list[list[float]]:
    """``s_k`` for every conversation (all shown with ``len(answers)`` candidates)."""
    from rmkit.serve.score import continuation_logprobs

    shared, tails = answer_token_ids(loaded.tokenizer, prefix, answers)
    if all(len(t) == 1 for t in tails):
        logp = next_token_logprobs(loaded, conversations, shared)
        return [[float(row[t[0]]) for t in tails] for row in logp]
    tok = loaded.tokenizer
    conts = [tok(prefix + a, add_special_tokens=False)["input_ids"] for a in answers]
    return [continuation_logprobs(loaded, conv, conts) for conv in conversations]


def judge_likelihood(
    batch: list[Any], backend: Any, tpl: Any, make_line
) -> Iterator[dict[str, Any]]:
    """Prediction lines for ``batch`` (runner ``Request`` objects, one sample each).

    ``make_line(request, sample, messages, completion, verdict)`` builds the line; the
    probabilities by shown position are added to it.
    """
    from rmkit.prompts import parse_verdict, render_judge_messages
    from rmkit.serve.score import answer_prefix, softmax

    loaded = getattr(backend, "loaded", None)
    if loaded is None:
        raise RmkitError(
            "method 'likelihood' needs a local judge model (judge.model)",
            hint="an API judge returns text, not answer probabilities; use method: generate",
        )
    groups: dict[tuple[str, int], list[int]] = {}
    for i, r in enumerate(batch):
        key = (answer_prefix(tpl, r.item.task, None), len(r.order))
        groups.setdefault(key, []).append(i)
    lines: dict[int, list[dict[str, Any]]] = {}
    for (prefix, n), idx in groups.items():
        answers = tpl.answers(n)
        convs = [render_judge_messages(batch[i].item.to_record(), batch[i].order, tpl) for i in idx]
        scores = score_conversations(loaded, convs, prefix, answers)
        for i, conv, s in zip(idx, convs, scores, strict=True):
            probs = softmax(s)
            best = max(range(n), key=lambda k: s[k])
            text = prefix + answers[best] + "</answer>"
            verdict = parse_verdict(text, tpl, n)
            out = []
            for sample in batch[i].pending:
                line = make_line(batch[i], sample, conv, ForcedCompletion(text), verdict)
                line["probabilities"] = probs
                line["logprobs"] = s
                out.append(line)
            lines[i] = out
    for i in range(len(batch)):
        yield from lines[i]
