"""Advantage estimators: group-normalised (GRPO family), batch-normalised (Reinforce++), and the
StableReinforce outlier filter. Pure tensor functions; shapes in each docstring.

Notation: ``B`` completions in the rollout batch, ``T`` completion tokens (padded), ``G`` the
group size (completions per prompt, stored contiguously: rows ``g*G .. g*G+G-1`` share a prompt).
"""

from __future__ import annotations

import torch

from rmkit.errors import RmkitError


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise RmkitError(f"rewards must be a 1-D tensor (B,), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise RmkitError(
            f"{rewards.numel()} rewards do not split into groups of {group_size}",
            hint="the rollout batch must hold the same number of completions for every prompt",
        )
    return rewards.view(-1, group_size)


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale_std: bool = True,
    eps: float = 1e-4,
    unbiased: bool = True,
) -> torch.Tensor:
    """Advantage of each completion relative to the other completions of its prompt.

    ``rewards``: (B,) with B = n_prompts * group_size, groups contiguous. Returns (B,):

    * ``scale_std=True`` (GRPO): (r - mean_g) / (std_g + eps);
    * ``scale_std=False`` (Dr. GRPO, MSRL): r - mean_g.

    ``unbiased=True`` uses the sample standard deviation (divides by G - 1, torch's default and
    what TRL-based GRPO code computes); ``unbiased=False`` the population one (divides by G).
    """
    if scale_std and group_size < 2:
        raise RmkitError(
            f"std-scaled group advantages need at least 2 completions per prompt, got {group_size}",
            hint="raise the number of completions per prompt, or use a batch-normalised algorithm",
        )
    r = _grouped(rewards, group_size).to(torch.promote_types(rewards.dtype, torch.float32))
    centred = r - r.mean(dim=1, keepdim=True)
    if scale_std:
        std = r.std(dim=1, keepdim=True, correction=1 if unbiased else 0)
        centred = centred / (std + eps)
    return centred.reshape(-1)


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
    eps: float = 1e-8,
    unbiased: bool = False,
) -> torch.Tensor:
    """(values - mean) / sqrt(max(var, eps)) with mean and variance over the valid entries of the
    whole batch.

    ``values``: any shape, e.g. (B,) or (B, T); ``mask``: same shape, True/1 = valid (None = all).
    Invalid entries come back as 0. ``unbiased=False`` (default) is the population variance.

    The variance is floored at ``eps`` rather than ``eps`` added to the std: when every value is
    the same number that float32 cannot hold exactly (0.7, say), the computed mean differs from
    it by a rounding error of ~1e-8 and so does the std; ``/(std + 1e-8)`` would blow that error
    up to an advantage of about +-0.9 on every token, ``* max(var, 1e-8) ** -0.5`` (the form
    OpenRLHF uses) keeps it small. The sums run in float64 so that the mean of thousands of
    equal float32 values is that value exactly and equal returns give exactly 0.
    """
    m = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.bool()
    count = m.sum()
    if count == 0:
        raise RmkitError("cannot normalise advantages over a batch with no valid entries")
    out_dtype = torch.promote_types(values.dtype, torch.float32)
    v = values.to(torch.float64)  # batch sums in float64: no rounding drift with many tokens
    mean = torch.where(m, v, 0).sum() / count
    sq = torch.where(m, (v - mean) ** 2, 0).sum()
    denom = (count - 1).clamp(min=1) if unbiased else count
    var = sq / denom
    return torch.where(m, (v - mean) * var.clamp(min=eps).rsqrt(), 0).to(out_dtype)


def clip_rewards(rewards: torch.Tensor, bound: float = 10.0) -> torch.Tensor:
    """Rewards clamped to [-bound, bound] (Reinforce++ uses 10). Any shape."""
    return rewards.clamp(-bound, bound)


def _last_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last valid token of each row of a (B, T) mask."""
    m = mask.bool()
    if not bool(m.any(dim=1).all()):
        raise RmkitError("a completion has no valid tokens; cannot place its reward")
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)
    return torch.where(m, positions, -1).max(dim=1).values


def kl_token_rewards(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    token_kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """Per-token rewards: -kl_coef * kl_t on every valid token, plus the sequence reward on the
    last valid token ("KL in the reward", Reinforce++).

    ``rewards``: (B,); ``mask``: (B, T); ``token_kl``: (B, T) per-token KL estimate (k1 =
    logp - ref_logp) or None. Returns (B, T), zero on padding.
    """
    m = mask.to(torch.promote_types(rewards.dtype, torch.float32))
    out = torch.zeros_like(m)
    if token_kl is not None and kl_coef != 0.0:
        out = out - kl_coef * token_kl.to(out.dtype) * m
    last = _last_index(mask)
    rows = torch.arange(out.shape[0], device=out.device)
    out[rows, last] += rewards.to(out.dtype)
    return out


def discounted_returns(
    token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0
) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1} over the valid tokens of each row. (B, T) -> (B, T).

    Padding contributes no reward and gets return 0.
    """
    m = mask.to(token_rewards.dtype)
    r = token_rewards * m
    if gamma == 1.0:
        returns = r.flip(1).cumsum(1).flip(1)
    else:
        returns = torch.zeros_like(r)
        running = torch.zeros_like(r[:, 0])
        for t in range(r.shape[1] - 1, -1, -1):
            running = r[:, t] + gamma * running
            returns[:, t] = running
    return returns * m


def reinforce_pp_returns(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    token_kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    reward_clip: float | None = 10.0,
    group_size: int = 1,
) -> torch.Tensor:
    """Reinforce++ token returns before whitening. ``rewards`` (B,), ``mask``/``token_kl``
    (B, T) -> (B, T).

    1. clip the sequence rewards to [-reward_clip, reward_clip];
    2. with several completions per prompt (``group_size`` > 1), subtract each prompt's mean
       reward first (the "baseline" variant);
    3. per-token rewards: -kl_coef * k1 on each token, sequence reward on the last token;
    4. returns with discount ``gamma`` (1: every token gets reward - KL still to come).
    """
    r = clip_rewards(rewards, reward_clip) if reward_clip is not None else rewards
    if group_size > 1:
        r = group_advantages(r, group_size, scale_std=False)
    token_r = kl_token_rewards(r, mask, token_kl, kl_coef)
    return discounted_returns(token_r, mask, gamma)


def reinforce_pp_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    token_kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    reward_clip: float | None = 10.0,
    group_size: int = 1,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Reinforce++ token advantages: :func:`reinforce_pp_returns` whitened over all valid tokens
    of the whole rollout batch (population variance floored at ``eps``, :func:`masked_whiten`).
    """
    returns = reinforce_pp_returns(rewards, mask, token_kl, kl_coef, gamma, reward_clip, group_size)
    return masked_whiten(returns, mask, eps=eps)


def outlier_filter(
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    sigma: float = 3.0,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """StableReinforce advantage filter: zero the advantages whose z-score exceeds ``sigma``.

    ``advantages``: (B,) or (B, T); ``mask``: same shape (None = all valid). The z-score of each
    valid, finite entry is (a - mean) / std with mean and population std over those entries;
    entries with |z| > sigma are set to 0, and so are NaN/Inf entries. Returns
    ``(filtered advantages, filtered mask (bool, True where zeroed), filtered fraction of the
    valid entries)``. If all finite entries are equal (std 0) none of them is an outlier.

    This is the paper's rule; :func:`released_outlier_filter` is the released code's.
    """
    valid = torch.ones_like(advantages, dtype=torch.bool) if mask is None else mask.bool()
    finite = torch.isfinite(advantages)
    good = valid & finite
    a = torch.where(good, advantages, 0).to(torch.promote_types(advantages.dtype, torch.float32))
    count = good.sum()
    outlier = torch.zeros_like(good)
    if count > 0:
        mean = a.sum() / count
        std = (torch.where(good, (a - mean) ** 2, 0).sum() / count).sqrt()
        if std > 0:
            outlier = good & ((a - mean).abs() / std > sigma)
    filtered = (valid & ~finite) | outlier
    out = torch.where(filtered | ~valid, torch.zeros_like(a), a).to(advantages.dtype)
    n_valid = int(valid.sum())
    frac = float(filtered.sum()) / n_valid if n_valid else 0.0
    return out, filtered, frac


def released_outlier_filter(
    advantages: torch.Tensor,
    raw: torch.Tensor,
    mask: torch.Tensor | None = None,
    sigma: float = 3.0,
    bound: float = 10.0,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The advantage filter of the released R1-Reward code.

    ``advantages``: the whitened advantages (B,) or (B, T); ``raw``: the same entries before
    whitening (the returns); ``mask``: same shape (None = all valid). With ``mean`` the mean of
    ``raw`` over the valid entries, an entry is kept when
    ``mean - sigma <= advantage <= mean + sigma``; then entries with |advantage| > ``bound`` and
    NaN/Inf entries are zeroed too. The kept window is centred on the *raw* mean, not on 0, so
    it equals the paper's |z| <= sigma only when that mean is 0: with rewards 2.0 (right) and
    0.5 (wrong), once more than about two thirds of a batch is right every wrong answer's
    advantage falls below the window and is zeroed. Returns like :func:`outlier_filter`.
    """
    valid = torch.ones_like(advantages, dtype=torch.bool) if mask is None else mask.bool()
    a = advantages.to(torch.promote_types(advantages.dtype, torch.float32))
    r = raw.to(a.dtype)
    count = valid.sum()
    mean = torch.where(valid, r, 0).sum() / count.clamp(min=1)
    finite = torch.isfinite(a)
    safe = torch.where(finite, a, 0)
    keep = finite & (safe >= mean - sigma) & (safe <= mean + sigma) & (safe.abs() <= bound)
    filtered = valid & ~keep
    out = torch.where(valid & keep, safe, torch.zeros_like(safe)).to(advantages.dtype)
    n_valid = int(valid.sum())
    frac = float(filtered.sum()) / n_valid if n_valid else 0.0
    return out, filtered, frac
