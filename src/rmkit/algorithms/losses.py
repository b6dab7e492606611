"""Policy losses, KL estimators, loss aggregation, SFT loss. Pure tensor functions.

Notation: ``B`` sequences, ``T`` completion tokens (padded), ``V`` vocabulary size; ``mask`` is
(B, T) with 1/True on completion tokens that count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rmkit.algorithms.constants import AGGREGATIONS
from rmkit.errors import RmkitError


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log p(token_t) under softmax(logits_t / temperature). (B, T, V), (B, T) -> (B, T).

    ``logits[:, t]`` must already be the prediction for ``tokens[:, t]`` (shift before calling).
    Computed in float32 at least.
    """
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:
        x = x / temperature
    picked = torch.gather(x, -1, tokens.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(x, dim=-1)


def _masked_stat(values: torch.Tensor, mask: torch.Tensor | None, how: str) -> torch.Tensor:
    v = values.detach()
    m = torch.ones_like(v, dtype=torch.bool) if mask is None else mask.bool()
    if not bool(m.any()):
        return torch.zeros((), dtype=v.dtype, device=v.device)
    if how == "max":
        return v[m].max()
    return v[m].float().mean()


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    log_ratio_clip: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate per token, with asymmetric clip and an optional log-ratio pre-clip.

    ``logp``, ``old_logp``: (B, T) token log-probs under the current and the rollout policy;
    ``advantages``: (B,) per sequence or (B, T) per token; ``mask``: (B, T) for the stats only.

        log_ratio = logp - old_logp, clamped to ``log_ratio_clip`` = (lo, hi) when given
        ratio     = exp(log_ratio)
        loss_t    = -min(ratio * A, clamp(ratio, 1 - clip_low, 1 + clip_high) * A)

    Without the pre-clip a large log-ratio overflows exp (float32: above ~88.7 -> inf) and the
    gradient of the discarded branch turns into NaN; StableReinforce uses
    ``PRECLIP_BOUNDS`` = (ln 1e-3, ln 1e3), so the ratio stays within [1e-3, 1e3].

    Returns ``(loss (B, T), stats)`` with detached 0-d tensors: ``clip_frac`` (fraction of valid
    tokens where the clipped term is the one used), ``ratio_max``, ``ratio_mean``,
    ``preclip_frac`` (fraction of valid tokens whose log-ratio was clamped).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    log_ratio = logp - old_logp
    preclipped = torch.zeros_like(log_ratio, dtype=torch.bool)
    if log_ratio_clip is not None:
        lo, hi = log_ratio_clip
        if not lo < 0 < hi:
            raise RmkitError(f"log_ratio_clip must be (lo < 0, hi > 0), got {log_ratio_clip}")
        preclipped = (log_ratio < lo) | (log_ratio > hi)
        log_ratio = log_ratio.clamp(lo, hi)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    stats = {
        "clip_frac": _masked_stat((clipped < unclipped).float(), mask, "mean"),
        "ratio_max": _masked_stat(ratio, mask, "max"),
        "ratio_mean": _masked_stat(ratio, mask, "mean"),
        "preclip_frac": _masked_stat(preclipped.float(), mask, "mean"),
    }
    return loss, stats


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 estimator of KL(pi || ref) per token: logp - ref_logp. (B, T) -> (B, T).

    Unbiased but can be negative per token; Reinforce++ adds -beta * k1 to the token rewards.
    """
    return logp - ref_logp


def kl_k3(
    logp: torch.Tensor, ref_logp: torch.Tensor, max_log_ratio: float | None = None
) -> torch.Tensor:
    """k3 estimator per token: exp(ref - logp) - (ref - logp) - 1 (always >= 0). (B, T) -> (B, T).

    GRPO adds beta * k3 to the per-token loss (beta = 0.04 in UnifiedReward-Think).
    ``max_log_ratio`` optionally clamps (ref - logp) to [-m, m] first, against overflow.
    """
    d = ref_logp - logp
    if max_log_ratio is not None:
        d = d.clamp(-max_log_ratio, max_log_ratio)
    return torch.exp(d) - d - 1.0


def aggregate_loss(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_mean",
    max_new_tokens: int | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss (B, T) to a scalar over the valid tokens of ``mask`` (B, T).

    * ``token_mean``: sum over all valid tokens / their count (long completions weigh more);
    * ``seq_mean``: mean over each sequence's tokens, then mean over the sequences that have
      tokens (the GRPO paper's 1/|o_i| form: every completion weighs the same);
    * ``constant`` (Dr. GRPO): sum over all valid tokens / (B * max_new_tokens), a normaliser
      that does not depend on the completions' lengths.
    """
    m = mask.to(loss.dtype)
    if mode == "token_mean":
        return (loss * m).sum() / m.sum().clamp(min=1.0)
    if mode == "seq_mean":
        per_seq = m.sum(dim=1)
        seq_loss = (loss * m).sum(dim=1) / per_seq.clamp(min=1.0)
        has = (per_seq > 0).to(loss.dtype)
        return (seq_loss * has).sum() / has.sum().clamp(min=1.0)
    if mode == "constant":
        if not max_new_tokens or max_new_tokens < 1:
            raise RmkitError("the 'constant' loss aggregation needs max_new_tokens >= 1")
        return (loss * m).sum() / (loss.shape[0] * max_new_tokens)
    raise RmkitError(
        f"unknown loss aggregation {mode!r}", hint="one of: " + ", ".join(AGGREGATIONS)
    )


def supervised_mask(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """(B, T) bool, True at the positions whose logits predict a counted label.

    Position t predicts ``labels[:, t + 1]``, so the last column is always False. Passed to a
    Hugging Face model as ``logits_to_keep``, it makes the output head run only there: an SFT
    target of a few tokens then skips the vocabulary projection of the whole prompt.
    """
    mask = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    mask[:, :-1] = labels[:, 1:] != ignore_index
    return mask


def sft_loss_selected(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """:func:`sft_loss` from the logits of the ``mask`` positions only.

    ``logits``: (N, V), the rows of the positions where ``mask`` (from :func:`supervised_mask`,
    N True entries, row-major) is True; ``labels``: (B, T). Same value as ``sft_loss`` on the
    full logits.
    """
    targets = labels[:, 1:].to(logits.device)[mask[:, :-1].to(logits.device)]
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    total = F.cross_entropy(x, targets, reduction="sum")
    if reduction == "sum":
        return total
    if reduction != "mean":
        raise RmkitError(f"sft_loss reduction must be 'mean' or 'sum', got {reduction!r}")
    return total / max(int(targets.numel()), 1)


def sft_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Next-token cross-entropy on the positions whose label is not ``ignore_index``.

    ``logits``: (B, T, V) from a forward pass over ``input_ids``; ``labels``: (B, T) aligned with
    ``input_ids`` (the shift happens here: logits[:, t] predicts labels[:, t + 1]). ``reduction``
    "mean" averages over the counted tokens (token-mean), "sum" returns the sum (for callers that
    normalise across micro-batches). With no counted token the result is a zero that keeps the
    graph (so distributed backward passes stay in step).
    """
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:].to(shift_logits.device)
    x = shift_logits.reshape(-1, shift_logits.shape[-1])
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    y = shift_labels.reshape(-1)
    total = F.cross_entropy(x, y, ignore_index=ignore_index, reduction="sum")
    count = (y != ignore_index).sum()
    if count == 0:
        return logits.sum() * 0.0
    if reduction == "sum":
        return total
    if reduction != "mean":
        raise RmkitError(f"sft_loss reduction must be 'mean' or 'sum', got {reduction!r}")
    return total / count


def sampler_token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    context_ids: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    *,
    context_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """log p(token_t) under the distribution a Hugging Face (or vLLM) sampler draws from.
    (B, T, V), (B, T) -> (B, T), float32 at least.

    The logits of each position go through, in Hugging Face ``generate``'s order:

    1. the repetition penalty: every token id in the context (``context_ids`` (B, P), the
       prompt; positions where ``context_mask`` is 0 are padding and ignored) or earlier in
       the completion (``tokens[:, :t]``) has its logit divided by ``repetition_penalty`` when
       positive, multiplied by it when negative;
    2. temperature: divided by ``temperature`` (> 0);
    3. top-k (``top_k > 0``): tokens below the ``k``-th largest logit are dropped (ties kept);
    4. top-p (``top_p < 1``): in ascending order of probability, the tokens whose cumulative
       probability is at most ``1 - top_p`` are dropped (the most likely token always stays).

    Dropped tokens get probability 0 and the kept ones are renormalised - except the token
    taken at that position, which is always kept: the trainer's logits differ slightly from the
    sampler's (batch, precision), and a sampled token must not get log-probability -inf.
    With every control neutral this is :func:`token_logprobs`. Gradients flow through the kept
    logits; the masks are computed without them.

    ``logits[:, t]`` must already be the prediction for ``tokens[:, t]``. Padding at the end of
    a completion only affects later (padding) positions. Memory: the penalty and the kept-token
    masks are booleans of the logits' shape; the top-p sort runs in chunks of positions.
    """
    if temperature <= 0:
        raise RmkitError(f"sampler_token_logprobs needs a temperature > 0 (got {temperature})")
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    tokens = tokens.long()
    if repetition_penalty != 1.0:
        seen = _seen_before(tokens, x.shape[-1], context_ids, context_mask)
        x = torch.where(seen, torch.where(x < 0, x * repetition_penalty, x / repetition_penalty), x)
    if temperature != 1.0:
        x = x / temperature
    keep = _kept_tokens(x.detach(), tokens, top_k, top_p)
    if keep is not None:
        x = x.masked_fill(~keep, float("-inf"))
    picked = torch.gather(x, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(x, dim=-1)


def _seen_before(
    tokens: torch.Tensor,
    vocab: int,
    context_ids: torch.Tensor | None,
    context_mask: torch.Tensor | None,
) -> torch.Tensor:
    """(B, T, V) bool: token v is in row b's context or in ``tokens[b, :t]``.

    From first-occurrence positions, not a loop: ``first[b, v]`` is the earliest t with
    ``tokens[b, t] == v`` (T when none), so v is seen at t exactly when ``first[b, v] < t``.
    """
    b, t = tokens.shape
    device = tokens.device
    first = torch.full((b, vocab), t, dtype=torch.long, device=device)
    steps = torch.arange(t, device=device).expand(b, t)
    first.scatter_reduce_(1, tokens, steps, reduce="amin")
    seen = first.unsqueeze(1) < torch.arange(t, device=device).view(1, t, 1)
    if context_ids is not None and context_ids.numel():
        ids = context_ids.long().to(device)
        if context_mask is not None:
            ids = ids.masked_fill(~context_mask.to(device).bool(), vocab)  # padding: column V
        ctx = torch.zeros((b, vocab + 1), dtype=torch.bool, device=device)
        ctx.scatter_(1, ids, True)
        seen = seen | ctx[:, :vocab].unsqueeze(1)
    return seen


def _kept_tokens(
    x: torch.Tensor, tokens: torch.Tensor, top_k: int, top_p: float, chunk: int = 1 << 26
) -> torch.Tensor | None:
    """(B, T, V) bool of the tokens top-k then top-p keep (the taken token always); None when
    both are off. ``x``: the logits after penalty and temperature (no grad needed)."""
    vocab = x.shape[-1]
    use_k = 0 < top_k < vocab
    if not use_k and top_p >= 1.0:
        return None
    with torch.no_grad():
        flat = x.reshape(-1, vocab)
        keep = torch.ones_like(flat, dtype=torch.bool)
        rows = max(1, chunk // vocab)
        for lo in range(0, flat.shape[0], rows):
            y = flat[lo : lo + rows]
            k = keep[lo : lo + rows]
            if use_k:
                kth = torch.topk(y, top_k, dim=-1).values[:, -1:]
                k &= y >= kth
                y = y.masked_fill(~k, float("-inf"))
            if top_p < 1.0:
                ordered, order = torch.sort(y, dim=-1)  # ascending
                drop = ordered.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
                drop[:, -1] = False  # the most likely token stays
                k &= ~drop.scatter(1, order, drop)
        keep = keep.view(x.shape)
        keep.scatter_(-1, tokens.unsqueeze(-1), True)
    return keep
