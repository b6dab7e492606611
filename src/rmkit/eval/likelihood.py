"""``method: likelihood`` for ``rmkit eval``: read the verdict off the judge's answer probabilities.

Instead of sampling a verdict, the assistant turn is teacher-forced up to the answer (the
template's fixed blocks, a think block, ``<answer>``: see
:func:`rmkit.serve.score.answer_prefix`) and every valid answer is scored:
``s_k = sum log p(answer_k tokens | prompt, prefix)``. The verdict is the shown position with the
highest score; ``softmax(s)`` is saved as the judge's probabilities. Every item gets a verdict
(nothing is unparsable), and the result does not depend on sampling, so it measures what a model
prefers even before it has learned the output format: a fair "before training" baseline.

The think block is empty by default (``reasoning: empty``). With ``reasoning: greedy`` the judge
first writes its own think block (greedy, stopped at ``</think>`` or ``<answer>``), and the
answers are scored after it: the same protocol measures a model that reasons before its verdict
and one that never learned to, since neither has to produce the answer format itself.

Speed: when every answer is one token after the forced prefix (``"1"``/``"2"``, ``"A"``/``"B"``),
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


def next_token_logprobs(loaded: Any, conversations: list[list[dict]], suffixes: list[list[int]]):
    """Log-probabilities (B, vocab) of the token after each ``conversation``'s generation prompt
    followed by its own ``suffixes[i]`` token ids (one left-padded forward pass)."""
    import torch

    from rmkit.models.chat import prepare_inputs

    inputs = prepare_inputs(loaded, conversations)
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    lengths = {len(s) for s in suffixes}
    if len(lengths) == 1:  # one suffix length: append to the left-padded batch as it is
        extra = torch.tensor([list(s) for s in suffixes], dtype=ids.dtype).reshape(len(ids), -1)
        inputs["input_ids"] = torch.cat([ids, extra], dim=1)
        inputs["attention_mask"] = torch.cat([mask, torch.ones_like(extra)], dim=1)
    else:  # re-pad on the left so every row still ends at its last token
        seq_keys = [k for k, t in inputs.items() if k not in ("input_ids", "attention_mask")
                    and hasattr(t, "shape") and tuple(t.shape[:2]) == tuple(ids.shape)]  # fmt: skip
        if seq_keys:  # per-token side tensors (some vision models): one row at a time
            rows = [
                next_token_logprobs(loaded, [c], [s])
                for c, s in zip(conversations, suffixes, strict=True)
            ]
            return torch.cat(rows)
        rows = [ids[i][mask[i].bool()].tolist() + list(s) for i, s in enumerate(suffixes)]
        width = max(len(r) for r in rows)
        pad = loaded.tokenizer.pad_token_id
        new_ids = torch.full((len(rows), width), 0 if pad is None else pad, dtype=ids.dtype)
        new_mask = torch.zeros((len(rows), width), dtype=mask.dtype)
        for i, r in enumerate(rows):
            new_ids[i, width - len(r) :] = torch.tensor(r, dtype=ids.dtype)
            new_mask[i, width - len(r) :] = 1
        inputs["input_ids"], inputs["attention_mask"] = new_ids, new_mask
    device = next(loaded.model.parameters()).device
    inputs = {n: t.to(device) if hasattr(t, "to") else t for n, t in inputs.items()}
    with torch.inference_mode():
        try:
            logits = loaded.model(**inputs, logits_to_keep=1).logits
        except TypeError:  # a model without logits_to_keep
            logits = loaded.model(**inputs).logits
        return torch.log_softmax(logits[:, -1].float(), dim=-1).cpu()


def score_conversations(
    loaded: Any, conversations: list[list[dict]], prefixes: list[str], answers: list[str]
) -> list[list[float]]:
    """``s_k`` for every conversation (all shown with ``len(answers)`` candidates), each after
    its own forced assistant ``prefixes[i]``."""
    from rmkit.serve.score import continuation_logprobs

    by_prefix = {p: answer_token_ids(loaded.tokenizer, p, answers) for p in set(prefixes)}
    split = [by_prefix[p] for p in prefixes]
    if all(len(t) == 1 for _, tails in split for t in tails):
        logp = next_token_logprobs(loaded, conversations, [shared for shared, _ in split])
        return [
            [float(row[t[0]]) for t in tails] for row, (_, tails) in zip(logp, split, strict=True)
        ]
    tok = loaded.tokenizer
    return [
        continuation_logprobs(
            loaded, conv, [tok(p + a, add_special_tokens=False)["input_ids"] for a in answers]
        )
        for conv, p in zip(conversations, prefixes, strict=True)
    ]


def greedy_reasoning(
    backend: Any, conversations: list[list[dict]], max_new_tokens: int
) -> list[Any]:
    """The judge's own reasoning for each conversation: a greedy completion stopped before
    ``</think>`` or ``<answer>`` (whichever it writes first) or at ``max_new_tokens``."""
    from rmkit.generation.base import SamplingParams

    params = SamplingParams(
        n=1, temperature=0.0, max_new_tokens=max_new_tokens, stop=("</think>", "<answer>")
    )
    return [row[0] for row in backend.generate(conversations, params)]


def judge_likelihood(
    batch: list[Any], backend: Any, tpl: Any, make_line, reasoning_tokens: int | None = None
) -> Iterator[dict[str, Any]]:
    """Prediction lines for ``batch`` (runner ``Request`` objects, one sample each).

    ``reasoning_tokens``: None forces an empty think block; a number lets the judge first write
    its think block greedily (at most that many tokens, :func:`greedy_reasoning`) and scores
    the answers after it. ``make_line(request, sample, messages, completion, verdict)`` builds
    the line; the probabilities by shown position are added to it.
    """
    from rmkit.prompts import parse_verdict, render_judge_messages
    from rmkit.serve.score import answer_prefix, softmax

    loaded = getattr(backend, "loaded", None)
    if loaded is None:
        raise RmkitError(
            "method 'likelihood' needs a local judge model (judge.model)",
            hint="an API judge returns text, not answer probabilities; use method: generate",
        )
    if reasoning_tokens is not None and not tpl.needs_think:
        raise RmkitError(
            f"reasoning: greedy needs a template with a think block; '{tpl.name}' has none",
            hint="use reasoning: empty, or a template whose blocks include think",
        )
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(batch):
        groups.setdefault(len(r.order), []).append(i)
    lines: dict[int, list[dict[str, Any]]] = {}
    for n, idx in groups.items():
        answers = tpl.answers(n)
        convs = [render_judge_messages(batch[i].item.to_record(), batch[i].order, tpl) for i in idx]
        thoughts = (
            greedy_reasoning(backend, convs, reasoning_tokens)
            if reasoning_tokens is not None
            else [None] * len(idx)
        )
        prefixes = [
            answer_prefix(tpl, batch[i].item.task, None if t is None else t.text.strip())
            for i, t in zip(idx, thoughts, strict=True)
        ]
        scores = score_conversations(loaded, convs, prefixes, answers)
        for i, conv, s, prefix, t in zip(idx, convs, scores, prefixes, thoughts, strict=True):
            probs = softmax(s)
            best = max(range(n), key=lambda k: s[k])
            text = prefix + answers[best] + "</answer>"
            verdict = parse_verdict(text, tpl, n)
            forced = ForcedCompletion(text, n_tokens=0 if t is None else t.n_tokens)
            out = []
            for sample in batch[i].pending:
                line = make_line(batch[i], sample, conv, forced, verdict)
                line["probabilities"] = probs
                line["logprobs"] = s
                out.append(line)
            lines[i] = out
    for i in range(len(batch)):
        yield from lines[i]
