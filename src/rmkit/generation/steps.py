"""Per-step token selection shared by the local backend's two decoders: the log-prob
recorder, the stop-string criterion, the repetition penalty, the temperature/top-k/top-p
processors ``generate`` would apply, and inverse-CDF sampling."""

from __future__ import annotations

import time
from typing import Any


class StepRecorder:
    """An identity logits processor that records when the first step ran and, if asked, the
    log-softmax of each step's logits at the token chosen there (and the top ``k``).

    ``processors`` (vLLM's ``processed_logprobs`` mode): the log-probs are taken after these
    (repetition penalty, temperature, top-k, top-p) are applied to a copy of the logits - the
    distribution the tokens were sampled from; without them, of the raw logits
    (``raw_logprobs``).
    """

    def __init__(self, want_logprobs: bool, top_k: int, processors: list | None = None):
        self.want, self.top_k = want_logprobs or top_k > 0, top_k
        self.processors = processors or []
        self.first_call: float | None = None
        self.prev = None  # (B, V) log-softmax of the previous step
        self.chosen: list[Any] = []  # per step: (B,) log-probs of the chosen tokens
        self.top: list[tuple[Any, Any]] = []  # per step: (values (B, k), indices (B, k))

    def __call__(self, input_ids, scores):
        import torch

        if self.first_call is None:
            if scores.is_cuda:  # let the prefill finish so the timing is true
                torch.cuda.synchronize(scores.device)
            self.first_call = time.perf_counter()
        if self.want:
            if self.prev is not None:
                self._take(input_ids[:, -1])
            processed = scores
            for proc in self.processors:
                processed = proc(input_ids, processed)
            self.prev = torch.log_softmax(processed.float(), dim=-1)
            if self.top_k:
                self.top.append(self.prev.topk(self.top_k, dim=-1))
        return scores

    def _take(self, tokens) -> None:
        self.chosen.append(self.prev.gather(1, tokens.view(-1, 1)).squeeze(1))

    def finish(self, last_tokens) -> tuple[list[list[float]] | None, list | None]:
        """Gather the last step (its chosen tokens only appear in the final sequences) and
        return, as Python lists (one device-to-host copy), the chosen tokens' log-probs
        ``[B][T]`` and the top alternatives ``[B][T][k]`` as (token id, log-prob) pairs."""
        import torch

        if not self.want or self.prev is None:
            return None, None
        self._take(last_tokens)
        self.prev = None
        chosen = torch.stack(self.chosen, dim=1).cpu().tolist()
        top = None
        if self.top_k:
            values = torch.stack([v for v, _ in self.top], dim=1).cpu().tolist()
            ids = torch.stack([i for _, i in self.top], dim=1).cpu().tolist()
            top = [
                [list(zip(ri, rv, strict=True)) for ri, rv in zip(i_row, v_row, strict=True)]
                for i_row, v_row in zip(ids, values, strict=True)
            ]
        return chosen, top


class StopStrings:
    """A stopping criterion for stop strings that looks at the *generated* text only (the
    prompt never triggers it, as in the OpenAI API). Records per row how many tokens had been
    generated when a stop string first appeared."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...], prompt_len: int):
        self.tokenizer, self.stops, self.prompt_len = tokenizer, stops, prompt_len
        self.window = max(len(s) for s in stops) + 8  # tokens: every token is >= 1 char or a byte
        self.done_at: dict[int, int] = {}

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        gen = input_ids[:, self.prompt_len :]
        flags = []
        for row in range(gen.shape[0]):
            if row not in self.done_at:
                tail = self.tokenizer.decode(
                    gen[row, -self.window :].tolist(), skip_special_tokens=True
                )
                if any(s in tail for s in self.stops):
                    self.done_at[row] = gen.shape[1]
            flags.append(row in self.done_at)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


def sample_categorical(probs):
    """One index per row of ``probs (rows, vocab)`` (rows sum to 1), drawn by inverse CDF from
    one uniform number per row (float64 cumulative sums; a zero-probability index is never
    returned). Uses the global torch RNG."""
    import torch

    cdf = probs.double().cumsum(dim=-1)
    u = torch.rand((probs.shape[0], 1), dtype=torch.float64, device=probs.device)
    index = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return index.squeeze(1).clamp_(max=probs.shape[1] - 1)


def warpers(gen_config) -> list:
    """The temperature, top-k and top-p processors ``generate`` would apply for this config,
    in its order."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    if not gen_config.do_sample:
        return []
    out = []
    if gen_config.temperature is not None and gen_config.temperature != 1.0:
        out.append(TemperatureLogitsWarper(gen_config.temperature))
    if gen_config.top_k is not None and gen_config.top_k != 0:
        out.append(TopKLogitsWarper(int(gen_config.top_k)))
    if gen_config.top_p is not None and gen_config.top_p < 1.0:
        out.append(TopPLogitsWarper(gen_config.top_p))
    return out


def penalize(scores, seen, penalty: float):
    """Hugging Face's (and vLLM's) repetition penalty: where ``seen`` (same shape as
    ``scores``, or broadcastable) is true, a positive logit is divided by ``penalty`` and a
    negative one multiplied by it. Returns a new tensor."""
    import torch

    hit = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, hit, scores)


class RepetitionPenalty:
    """A logits processor applying :func:`penalize` to every token of each row's prompt and of
    what the row has generated so far.

    ``prompts``: the prompt token ids of each row (no padding). ``start``: how many leading
    columns of the ``input_ids`` it is called with are the (padded) prompt - those columns are
    skipped, the prompt being known from ``prompts`` (so left padding is never penalised);
    0 when ``input_ids`` hold the generated tokens only. The per-row set of seen tokens is a
    ``(rows, vocab)`` boolean mask built on the first call and extended with the columns not
    seen before, so calling it twice with the same ``input_ids`` (the log-prob recorder's copy
    and the real chain) gives the same result.
    """

    def __init__(self, penalty: float, prompts: list[list[int]], start: int = 0):
        self.penalty, self.prompts, self.start = float(penalty), prompts, start
        self.seen = None
        self.upto = start

    def __call__(self, input_ids, scores):
        import torch

        if self.seen is None:
            rows, vocab = scores.shape
            self.seen = torch.zeros((rows, vocab), dtype=torch.bool, device=scores.device)
            r = [i for i, ids in enumerate(self.prompts) for _ in ids]
            t = [tok for ids in self.prompts for tok in ids]
            if t:
                self.seen[
                    torch.tensor(r, device=scores.device), torch.tensor(t, device=scores.device)
                ] = True
        width = input_ids.shape[1]
        if width > self.upto:
            self.seen.scatter_(1, input_ids[:, self.upto :].to(self.seen.device), True)
            self.upto = width
        return penalize(scores, self.seen, self.penalty)
