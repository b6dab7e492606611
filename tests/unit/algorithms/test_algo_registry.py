"""The ALGORITHMS dict and compute_advantages, the one call the RL loop makes."""

import dataclasses
import math

import pytest
import torch

from rmkit.algorithms import (
    ALGORITHMS,
    PRECLIP_BOUNDS,
    Algorithm,
    Settings,
    algorithm_names,
    compute_advantages,
    get_algorithm,
    register,
)
from rmkit.errors import RmkitError


def test_algorithm_definitions():
    assert {"grpo", "dr_grpo", "reinforce_pp", "stable_reinforce"} <= set(ALGORITHMS)
    assert algorithm_names() == tuple(ALGORITHMS)
    grpo, dr, rpp, sr = (
        ALGORITHMS[k] for k in ("grpo", "dr_grpo", "reinforce_pp", "stable_reinforce")
    )
    g = grpo.defaults
    assert (grpo.scale_std, g.kl_mode, g.kl_coef, g.aggregation, grpo.needs_groups) == (
        True, "k3_loss", 0.04, "seq_mean", True,
    )  # fmt: skip
    assert (dr.scale_std, dr.defaults.aggregation, dr.defaults.kl_mode) == (
        False, "constant", "none",
    )  # fmt: skip
    r = rpp.defaults
    assert (r.kl_mode, r.kl_coef, r.reward_clip, r.preclip, r.aggregation) == (
        "k1_reward", 1e-3, 10.0, False, "seq_mean",
    )  # fmt: skip
    assert "k1_reward" in rpp.kl_modes and "k1_reward" not in grpo.kl_modes
    s = sr.defaults
    assert s.preclip and s.preclip_bounds == PRECLIP_BOUNDS and s.kl_coef == 0.0
    assert (sr.filter_rules, s.filter_rule, s.filter_sigma) == (("paper", "released"), "paper", 3.0)
    assert not rpp.filter_rules and r.filter_rule is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.kl_coef = 0.0  # type: ignore[misc]
    with pytest.raises(RmkitError, match="unknown RL algorithm"):
        get_algorithm("ppo")


def test_register_refuses_inconsistent_definitions():
    class Unnamed(Algorithm):
        summary = "x"

    with pytest.raises(TypeError, match="must set the class attribute 'name'"):
        register(Unnamed)

    class BadKL(Algorithm):
        name = "bad_kl_test"
        summary = "x"
        defaults = Settings(kl_mode="k1_reward")  # not in kl_modes

    with pytest.raises(TypeError, match="out of range"):
        register(BadKL)
    assert "bad_kl_test" not in ALGORITHMS


def test_token_loss_is_the_clipped_surrogate_plus_the_k3_term():
    logp = torch.tensor([[0.0, -1.0]])
    old = torch.tensor([[0.0, -1.5]])  # ratio 1 and e^0.5 = 1.6487 > 1.2: clipped for A > 0
    ref = torch.tensor([[-0.5, -1.0]])
    mask = torch.ones(1, 2)
    adv = torch.tensor([2.0])
    grpo = ALGORITHMS["grpo"]
    loss, st = grpo.token_loss(logp, old, adv, mask, grpo.defaults, ref)
    k3_first = math.exp(-0.5) + 0.5 - 1  # exp(ref - logp) - (ref - logp) - 1
    assert loss[0, 0].item() == pytest.approx(-2.0 + 0.04 * k3_first)
    assert loss[0, 1].item() == pytest.approx(-1.2 * 2.0)  # clipped; k3 of equal log-probs is 0
    assert st["clip_frac"].item() == pytest.approx(0.5)
    off = dataclasses.replace(grpo.defaults, kl_mode="none", kl_coef=0.0)
    assert grpo.token_loss(logp, old, adv, mask, off, ref)[0][0, 0].item() == pytest.approx(-2.0)


def test_grpo_and_dr_grpo_token_advantages():
    rewards = torch.tensor([1.0, 0.0, 2.0, 0.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    adv, stats = compute_advantages(ALGORITHMS["dr_grpo"], rewards, mask, group_size=2)
    # groups [1,0] -> [0.5,-0.5]; [2,0] -> [1,-1]; broadcast over valid tokens, 0 on padding
    assert adv.tolist() == [[0.5, 0.5, 0.0], [-0.5, 0.0, 0.0], [1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]]
    # mean over the 8 valid tokens: (0.5*2 - 0.5 + 1*3 - 1*2) / 8 = 1.5 / 8
    assert stats["adv/mean"] == pytest.approx(1.5 / 8)
    adv, _ = compute_advantages(ALGORITHMS["grpo"], rewards, mask, group_size=2)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)  # sample std of [1,0] = sqrt(0.5)
    b = 1.0 / (math.sqrt(2.0) + 1e-4)  # sample std of [2,0] = sqrt(2)
    assert adv[0, 0].item() == pytest.approx(a) and adv[3, 1].item() == pytest.approx(-b)
    with pytest.raises(RmkitError, match="group_size must be >= 2"):
        compute_advantages(ALGORITHMS["grpo"], rewards, mask)


def test_stable_reinforce_filters_and_reports():
    rewards = torch.tensor([0.0] * 10 + [11.0])
    mask = torch.ones(11, 1)
    adv, stats = compute_advantages(ALGORITHMS["stable_reinforce"], rewards, mask)
    # rewards clipped to [-10, 10] -> ten 0s and a 10. Whitened: mean 10/11, squared deviations
    # 10*(10/11)^2 + (100/11)^2 = 11000/121, population std sqrt(1000)/11, so the 10 becomes
    # (100/11) / (sqrt(1000)/11) = sqrt(10) = 3.16 and each 0 becomes -1/sqrt(10). The filter
    # (mean 0, std 1 after whitening) zeroes the 3.16 > 3.
    assert stats["adv/filtered_frac"] == pytest.approx(1 / 11)
    assert adv[10, 0].item() == 0.0
    assert adv[0, 0].item() == pytest.approx(-1 / math.sqrt(10), rel=1e-5)
    plain, plain_stats = compute_advantages(ALGORITHMS["reinforce_pp"], rewards, mask)
    assert plain[10, 0].item() == pytest.approx(math.sqrt(10), rel=1e-5)
    assert "adv/filtered_frac" not in plain_stats


def test_reinforce_pp_uses_kl_only_in_k1_mode():
    rewards = torch.tensor([1.0, 0.0])
    mask = torch.ones(2, 2)
    kl = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    with_kl, _ = compute_advantages(
        ALGORITHMS["reinforce_pp"], rewards, mask, token_kl=kl, kl_coef=0.5
    )
    # KL mode off: the KL is not used even when given
    off, _ = compute_advantages("reinforce_pp", rewards, mask, token_kl=kl, kl_mode="none")
    assert off[0, 0].item() == pytest.approx(off[0, 1].item())
    without, _ = compute_advantages(ALGORITHMS["reinforce_pp"], rewards, mask)
    # with KL: token rewards [[-0.5, 1], [0, 0]] -> returns [[0.5, 1], [0, 0]]; without [[1,1],[0,0]]
    assert with_kl[0, 0].item() < with_kl[0, 1].item()
    assert without[0, 0].item() == pytest.approx(without[0, 1].item())


def test_reinforce_pp_equal_rewards_give_near_zero_advantages():
    # Every return is 0.7, which float32 cannot hold: the batch mean differs from it by a
    # rounding error and the std is ~1e-8 instead of 0. std + 1e-8 would make every token's
    # advantage about +-0.9; the variance floor keeps it at rounding size.
    for n, t in ((7, 5), (64, 33), (3, 1)):
        rewards = torch.full((n,), 0.7)
        mask = torch.ones(n, t)
        mask[0, max(1, t // 2) :] = 0  # ragged lengths too
        for name in ("reinforce_pp", "stable_reinforce"):
            adv, _ = compute_advantages(name, rewards, mask, kl_coef=0.0)
            assert adv.abs().max().item() <= 1e-3, (name, n, t)
    # the old form really was wrong on such a batch (sanity of the test itself)
    from rmkit.algorithms import reinforce_pp_returns

    ret = reinforce_pp_returns(torch.full((7,), 0.7), torch.ones(7, 5))
    mean = ret.mean()
    std = ((ret - mean) ** 2).mean().sqrt()
    assert std.item() > 0  # float32 rounding makes it nonzero
    assert ((ret - mean) / (std + 1e-8)).abs().max().item() > 0.1


def _r1_batch(n_right: int, n_wrong: int):
    """One token per completion; right answers 2.0 (0.5 format + 1 * (1 + 0.5 consistency)),
    wrong ones 0.5 (format only)."""
    rewards = torch.tensor([2.0] * n_right + [0.5] * n_wrong)
    return rewards, torch.ones(n_right + n_wrong, 1)


def test_released_filter_zeroes_wrong_answers_once_most_are_right():
    # 17 of 20 right (85%): mean 1.775, population std 1.5 * sqrt(0.85 * 0.15) = 0.53559.
    # z(right) = 0.225 / 0.53559 = 0.4201, z(wrong) = -1.275 / 0.53559 = -2.3805.
    # Released window: raw mean +- 3 = [-1.225, 4.775]: every wrong z falls below it.
    rewards, mask = _r1_batch(17, 3)
    sr = ALGORITHMS["stable_reinforce"]
    released = dataclasses.replace(sr.defaults, filter_rule="released")
    adv, stats = compute_advantages(sr, rewards, mask, released)
    assert adv[:17, 0].tolist() == pytest.approx([0.4201] * 17, abs=1e-4)
    assert adv[17:, 0].tolist() == [0.0, 0.0, 0.0]
    assert stats["adv/filtered_frac"] == pytest.approx(3 / 20)
    # the paper rule (|z| <= 3) keeps the wrong answers' negative advantages
    paper, pstats = compute_advantages(sr, rewards, mask)
    assert paper[17:, 0].tolist() == pytest.approx([-2.3805] * 3, abs=1e-4)
    assert pstats["adv/filtered_frac"] == 0.0


def test_released_filter_keeps_wrong_answers_while_few_are_right():
    # 1 of 2 right: mean 1.25, std 0.75, z = +-1; window [-1.75, 4.25]: both kept.
    rewards, mask = _r1_batch(1, 1)
    released = dataclasses.replace(ALGORITHMS["stable_reinforce"].defaults, filter_rule="released")
    adv, stats = compute_advantages("stable_reinforce", rewards, mask, released)
    assert adv[:, 0].tolist() == pytest.approx([1.0, -1.0], abs=1e-5)
    assert stats["adv/filtered_frac"] == 0.0
