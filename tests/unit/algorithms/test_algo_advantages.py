"""Advantage estimators and the StableReinforce filter against hand-computed numbers."""

import math

import pytest
import torch

from rmkit.algorithms import (
    clip_rewards,
    discounted_returns,
    group_advantages,
    kl_token_rewards,
    masked_whiten,
    outlier_filter,
    reinforce_pp_advantages,
    released_outlier_filter,
)
from rmkit.errors import RmkitError

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_group_advantages_with_sample_std():
    adv = group_advantages(REWARDS, group_size=4, eps=1e-4)
    # group [1,0,0,1]: mean 0.5, deviations ±0.5, sum of squares 1, sample std sqrt(1/3)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)  # = 0.865876
    # group [2,0,1,1]: mean 1, deviations [1,-1,0,0], sum of squares 2, sample std sqrt(2/3)
    b = 1.0 / (math.sqrt(2 / 3) + 1e-4)  # = 1.224595
    # group [1,1,1,1]: all deviations 0 -> 0 / (0 + eps) = 0
    expected = [a, -a, -a, a, b, -b, 0, 0, 0, 0, 0, 0]
    assert adv.tolist() == pytest.approx(expected, rel=1e-6)


def test_group_advantages_with_population_std():
    adv = group_advantages(REWARDS[:8], group_size=4, eps=1e-4, unbiased=False)
    a = 0.5 / (0.5 + 1e-4)  # population std of [1,0,0,1] = sqrt(1/4) = 0.5
    b = 1.0 / (math.sqrt(0.5) + 1e-4)  # population std of [2,0,1,1] = sqrt(2/4)
    assert adv.tolist() == pytest.approx([a, -a, -a, a, b, -b, 0, 0], rel=1e-6)


def test_group_advantages_without_std():
    adv = group_advantages(REWARDS, group_size=4, scale_std=False)
    assert adv.tolist() == [0.5, -0.5, -0.5, 0.5, 1.0, -1.0, 0.0, 0.0, 0, 0, 0, 0]
    # groups of 2: [1,0] -> ±0.5, [0,1] -> ∓0.5, ...
    assert group_advantages(REWARDS[:4], 2, scale_std=False).tolist() == [0.5, -0.5, -0.5, 0.5]


def test_group_advantages_bad_shapes():
    with pytest.raises(RmkitError, match="do not split into groups of 5"):
        group_advantages(REWARDS, 5)
    with pytest.raises(RmkitError, match="at least 2"):
        group_advantages(REWARDS, 1)
    with pytest.raises(RmkitError, match="1-D"):
        group_advantages(REWARDS.view(3, 4), 4)


def test_batch_normalised_sequence_level():
    adv = masked_whiten(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    # mean 3, deviations [-2,-1,0,3], squares sum 14, population variance 14/4 = 3.5
    std = math.sqrt(3.5)  # 1.870829
    assert adv.tolist() == pytest.approx([-2 / std, -1 / std, 0.0, 3 / std], rel=1e-6)
    unbiased = masked_whiten(torch.tensor([1.0, 2.0, 3.0, 6.0]), unbiased=True)
    assert unbiased[3].item() == pytest.approx(3 / math.sqrt(14 / 3), rel=1e-6)


def test_clip_and_discounted_returns():
    assert clip_rewards(torch.tensor([-15.0, 3.0, 12.0])).tolist() == [-10.0, 3.0, 10.0]
    r = torch.tensor([[1.0, 2.0, 4.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # gamma 0.5: G2 = 4, G1 = 2 + 0.5*4 = 4, G0 = 1 + 0.5*4 = 3; padding -> 0
    assert discounted_returns(r, mask, gamma=0.5).tolist() == [[3.0, 4.0, 4.0, 0.0]]
    # gamma 1: reverse cumulative sums 7, 6, 4
    assert discounted_returns(r, mask).tolist() == [[7.0, 6.0, 4.0, 0.0]]


def test_kl_in_reward_and_reinforce_pp_advantages():
    rewards = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0]])
    token_r = kl_token_rewards(rewards, mask, kl, kl_coef=0.1)
    # row 0: -0.1*[0.1,0.2,0.3] + [0,0,1] = [-0.01,-0.02,0.97]; row 1: [-0.05,-0.05-1, 0 (pad)]
    assert token_r.flatten().tolist() == pytest.approx(
        [-0.01, -0.02, 0.97, -0.05, -1.05, 0.0], abs=1e-6
    )
    adv = reinforce_pp_advantages(rewards, mask, kl, kl_coef=0.1)
    # returns (gamma 1): row 0 [0.94, 0.95, 0.97]; row 1 [-1.10, -1.05, pad]
    returns = [0.94, 0.95, 0.97, -1.10, -1.05]
    mean = sum(returns) / 5  # 0.142
    std = math.sqrt(sum((x - mean) ** 2 for x in returns) / 5)  # population std = 0.993849
    want = [(x - mean) / (std + 1e-8) for x in returns]
    assert adv[mask.bool()].tolist() == pytest.approx(want, rel=1e-5)
    assert adv[1, 2].item() == 0.0


def test_reinforce_pp_clips_rewards_and_subtracts_group_baseline():
    mask = torch.ones(4, 1)
    # rewards 20 and -20 are clipped to ±10 first: [10, 0, -10, 2] -> whitened
    adv = reinforce_pp_advantages(torch.tensor([20.0, 0.0, -20.0, 2.0]), mask)
    vals = [10.0, 0.0, -10.0, 2.0]
    mean = 0.5
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 4)
    assert adv.squeeze(1).tolist() == pytest.approx([(v - mean) / std for v in vals], rel=1e-6)
    # two completions per prompt: [3, 1 | 5, 5] -> baseline-subtracted [1, -1, 0, 0] -> whitened
    grouped = reinforce_pp_advantages(torch.tensor([3.0, 1.0, 5.0, 5.0]), mask, group_size=2)
    s = math.sqrt(0.5)  # population std of [1, -1, 0, 0]
    assert grouped.squeeze(1).tolist() == pytest.approx([1 / s, -1 / s, 0.0, 0.0], rel=1e-6)


def test_reward_needs_a_valid_token():
    with pytest.raises(RmkitError, match="no valid tokens"):
        kl_token_rewards(torch.tensor([1.0]), torch.tensor([[0, 0]]))


def test_outlier_filter_paper_rule():
    adv = torch.tensor([0.0] * 10 + [11.0])
    out, filtered, frac = outlier_filter(adv)
    # mean 1, population variance (10*1 + 10^2)/11 = 10, std 3.1623; z(11) = 10/3.1623 = 3.16 > 3
    assert filtered.tolist() == [False] * 10 + [True]
    assert out.tolist() == [0.0] * 11
    assert frac == pytest.approx(1 / 11)
    # exactly 3 sigma is kept: [0]*9 + [10] -> mean 1, std 3, z = 9/3 = 3
    kept, f2, frac2 = outlier_filter(torch.tensor([0.0] * 9 + [10.0]))
    assert not f2.any() and kept[-1].item() == 10.0 and frac2 == 0.0


def test_outlier_filter_is_shift_invariant_unlike_the_released_rule():
    # The paper rule recomputes z itself: shifting every advantage changes nothing.
    adv = torch.tensor([100.0] * 10 + [111.0])
    _, filtered, frac = outlier_filter(adv)
    assert filtered.tolist() == [False] * 10 + [True] and frac == pytest.approx(1 / 11)
    # The released rule centres its window [m - 3, m + 3] on the raw mean m. The whitened
    # values are z = [-1/sqrt(10)] * 10 + [sqrt(10)] = -0.3162 (x10), 3.1623. With m = 101 the
    # window is [98, 104] and every entry is zeroed; with m = 0 only the 3.1623 is.
    z = masked_whiten(adv)
    zeroed, f_hi, frac_hi = released_outlier_filter(z, adv, sigma=3.0)
    assert f_hi.all() and frac_hi == 1.0 and not zeroed.any()
    _, f_zero, frac_zero = released_outlier_filter(z, adv - adv.mean(), sigma=3.0)
    assert f_zero.tolist() == [False] * 10 + [True] and frac_zero == pytest.approx(1 / 11)


def test_released_filter_drops_beyond_ten_and_non_finite_and_respects_mask():
    z = torch.tensor([[11.0, 2.0], [float("nan"), -2.0], [50.0, 1.0]])
    raw = torch.tensor([[9.0, 9.0], [9.0, 9.0], [0.0, 9.0]])
    mask = torch.tensor([[1, 1], [1, 1], [0, 1]])
    # valid raw mean = 9 -> window [6, 12]: 11 kept by the window, then dropped by |z| > 10;
    # 2, -2, 1 fall below the window; NaN dropped; the 50 is padding: 0, not counted.
    out, filtered, frac = released_outlier_filter(z, raw, mask, sigma=3.0)
    assert out.tolist() == [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    assert filtered.tolist() == [[True, True], [True, True], [False, True]]
    assert frac == 1.0
    out, _, frac = released_outlier_filter(z, raw - 8.0, mask, sigma=3.0)  # window [-2, 4]
    assert out.tolist() == [[0.0, 2.0], [0.0, -2.0], [0.0, 1.0]] and frac == pytest.approx(2 / 5)


def test_outlier_filter_zeroes_nan_inf_and_respects_mask():
    adv = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 11.0, float("nan")],
                        [float("inf"), 1e9, 0.0, 0.0, 0.0, 0.0]])  # fmt: skip
    mask = torch.ones_like(adv, dtype=torch.bool)
    mask[2, 1:] = False  # 1e9 and the zeros after it are padding: ignored
    out, filtered, frac = outlier_filter(adv, mask, sigma=3.0)
    # valid entries: row 0 six, row 1 six, row 2 one (the Inf) = 13. Finite valid values: ten 0s
    # and the 11 -> mean 1, population variance (10*1 + 10^2)/11 = 10, z(11) = 10/sqrt(10) = 3.16
    # > 3 -> filtered; NaN and Inf are filtered too: 3 of 13
    assert filtered[1, 4] and filtered[1, 5] and filtered[2, 0]
    assert int(filtered.sum()) == 3 and frac == pytest.approx(3 / 13)
    assert torch.isfinite(out).all() and out[2, 1].item() == 0.0  # padding comes back as 0
    # sigma 4 keeps the 11 but still drops NaN/Inf
    _, f4, frac4 = outlier_filter(adv, mask, sigma=4.0)
    assert int(f4.sum()) == 2 and frac4 == pytest.approx(2 / 13)
