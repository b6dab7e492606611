"""RL diagnostics: the share of prompt groups whose rewards carry no preference."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rmkit.training.engine import StepTimer
from rmkit.training.rl import _Acc, _step_metrics, zero_variance_groups


def test_zero_variance_groups_counts_groups_with_equal_rewards():
    totals = [
        1.0, 1.0, 1.0, 1.0,  # all right: no variance
        0.0, 1.0, 0.0, 0.0,  # one right: variance
        0.5, 0.5, 0.5, 0.5 + 1e-9,  # equal up to rounding: no variance
        1.75, 1.75, 0.25, 1.75,  # variance
        0.0, 0.0, 0.0, 0.0,  # all wrong: no variance
    ]  # fmt: skip
    assert zero_variance_groups(totals, 4) == (3.0, 5.0)
    assert zero_variance_groups(totals[:8], 2) == (3.0, 4.0)  # pairs (1,1) (1,1) (0,1) (0,0)
    assert zero_variance_groups([0.0, 1.0], 1) == (2.0, 2.0)  # one completion: never varies
    with pytest.raises(ValueError, match="groups of 4"):
        zero_variance_groups([1.0] * 6, 4)


def _step(totals: list[float], group: int) -> dict[str, float]:
    """``_step_metrics`` of a hand-built single-process step with these rewards."""
    n = len(totals)
    completion = SimpleNamespace(token_ids=[1, 2, 3], finish_reason="stop")
    ro = SimpleNamespace(completions=[completion] * n, group=group, record_group=group, stats={})
    rewards = SimpleNamespace(
        components={"accuracy": [float(t >= 2.0) for t in totals], "format": [1.0] * n}
    )
    run = SimpleNamespace(
        accel=SimpleNamespace(device="cpu", num_processes=1),
        cfg=SimpleNamespace(optimizer_steps_per_step=1),
        settings=SimpleNamespace(preclip=False),
        reference=None,
    )
    acc = _Acc(1)
    acc.grad_norms = [1.0]
    timer = StepTimer()
    timer.mark("rollout")
    return _step_metrics(run, ro, totals, rewards, acc, timer, {"adv/mean": 0.0}, 10)


def test_step_metrics_log_the_zero_variance_share_and_every_reward_component():
    totals = [2.0, 2.0, 2.0, 2.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # groups of 4
    m = _step(totals, 4)
    assert m["rl/zero_variance_groups"] == pytest.approx(2 / 3)
    assert m["reward/total"] == pytest.approx(sum(totals) / 12)
    assert m["reward/accuracy"] == pytest.approx(5 / 12)
    assert m["reward/format"] == 1.0
    assert m["response/length"] == 3.0
    # grouped in pairs the same rewards have 5 flat groups of 6
    assert _step(totals, 2)["rl/zero_variance_groups"] == pytest.approx(5 / 6)
    # one completion per prompt: no groups to speak of, no metric
    assert "rl/zero_variance_groups" not in _step(totals, 1)
