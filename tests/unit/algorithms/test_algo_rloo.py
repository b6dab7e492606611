"""RLOO, the worked example of adding an algorithm (docs/algorithms.md)."""

import pytest
import torch

from rmkit.algorithms import ALGORITHMS, compute_advantages


def test_leave_one_out_baseline_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 4.0, 0.0])  # two prompts, three completions each
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1], [1, 1], [1, 0]])
    adv, stats = compute_advantages("rloo", rewards, mask, group_size=3)
    # prompt 1: 1 - (0+0)/2 = 1, 0 - (1+0)/2 = -0.5 (twice); prompt 2: 2 - 2 = 0, 4 - 1 = 3, 0 - 3
    expected = [[1.0, 1.0], [-0.5, 0.0], [-0.5, -0.5], [0.0, 0.0], [3.0, 3.0], [-3.0, 0.0]]
    assert adv.flatten().tolist() == pytest.approx(sum(expected, []), abs=1e-6)
    assert stats["adv/mean"] == pytest.approx((2 - 1.5 + 6 - 3) / 10)


def test_rloo_needs_groups_and_is_a_config_choice():
    from tests.unit.training.test_config import check, rl_cfg

    with pytest.raises(Exception, match="group_size must be >= 2"):
        compute_advantages("rloo", torch.tensor([1.0]), torch.ones(1, 1))
    rl = check(rl_cfg(**{"rl.algorithm": "rloo"})).rl
    assert (rl.kl.mode, rl.kl.coef, rl.aggregation) == ("none", 0.0, "seq_mean")
    assert ALGORITHMS["rloo"].needs_groups
