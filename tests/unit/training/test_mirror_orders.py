"""rl.mirror_orders: each prompt's group split between its candidate order and the reverse."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rmkit.config.validate import validate_config
from rmkit.errors import ConfigError
from rmkit.generation.base import Completion
from rmkit.training.config import TrainConfig


def rl_cfg(n: int = 4, **rl) -> TrainConfig:
    return validate_config(
        TrainConfig,
        {
            "stage": "rl",
            "data": {"path": "x.jsonl"},
            "batch": {"prompts_per_step": 2, "completions_per_prompt": n},
            "rl": {"algorithm": "grpo", **rl},
            "rewards": {"components": [{"name": "accuracy"}]},
            "max_steps": 1,
        },
        "test",
    )


def _records():
    return [
        {"id": f"r{i}", "task": "text", "prompt": f"Q{i}?", "candidates": ["good", "bad"],
         "label": 0, "label_kind": "preferred", "images": []}
        for i in range(2)
    ]  # fmt: skip


def test_odd_group_refused_and_default_off():
    assert rl_cfg().rl.mirror_orders is False
    with pytest.raises(ConfigError, match="completions_per_prompt must be even"):
        rl_cfg(n=3, mirror_orders=True)


def test_each_record_rendered_in_its_order_and_the_reverse_with_half_the_group():
    from rmkit.prompts import get_template
    from rmkit.training.rollout import render_rollout

    plain = SimpleNamespace(cfg=rl_cfg(), template=get_template("default"), image_root=None, rank=0)
    mirror = SimpleNamespace(**{**vars(plain), "cfg": rl_cfg(mirror_orders=True)})
    recs, orders, convs, params = render_rollout(plain, _records(), 0, 0)
    m_recs, m_orders, m_convs, m_params = render_rollout(mirror, _records(), 0, 0)
    assert (len(recs), params.n) == (2, 4)
    assert (len(m_recs), m_params.n) == (4, 2)
    assert [r["id"] for r in m_recs] == ["r0", "r0", "r1", "r1"]
    for k in range(2):
        assert m_orders[2 * k] == orders[k]  # the seeded order first, as without mirroring
        assert m_orders[2 * k + 1] == orders[k][::-1]
        assert m_convs[2 * k] == convs[k]
        assert m_convs[2 * k + 1] != convs[k]


def test_a_position_only_policy_gets_unequal_rewards_in_its_group():
    """Always answering "1": without mirroring every group is all-right or all-wrong (no
    advantage); mirrored, each record's group holds both, so the group advantage is nonzero."""
    from rmkit.prompts import get_template
    from rmkit.rewards import compose
    from rmkit.training.rl import zero_variance_groups
    from rmkit.training.rollout import assemble_rollout, render_rollout, score

    for mirrored, want_zero_var in ((False, 1.0), (True, 0.0)):
        cfg = rl_cfg(mirror_orders=mirrored)
        run = SimpleNamespace(cfg=cfg, template=get_template("default"), image_root=None, rank=0)
        run.reward_fn = compose([{"name": "accuracy"}])
        recs, orders, convs, params = render_rollout(run, _records(), 0, 0)
        always_1 = [
            [Completion("<answer>1</answer>", 1, 0.0, "stop", token_ids=[1])] * params.n
            for _ in recs
        ]
        ro = assemble_rollout(run, recs, orders, convs, always_1, {}, params.n)
        assert ro.record_group == 4
        totals, _, samples = score(run, ro)
        assert [s.sample_id for s in samples[:4]] == [f"r0#{i}" for i in range(4)]
        zero, groups = zero_variance_groups(totals, ro.record_group)
        assert groups == 2 and zero / groups == want_zero_var
