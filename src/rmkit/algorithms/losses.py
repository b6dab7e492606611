"""Policy losses, KL estimators, loss aggregation, SFT loss. Pure tensor functions.

Notation: ``B`` sequences, ``T`` completion tokens (padded), ``V`` vocabulary size; ``mask`` is
(B, T) with 1/True on completion tokens that count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rmkit.algorithms.base import AGGREGATIONS
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
