"""The update direction is right: RL learns a trivially learnable verifiable task.

The slow test and its fast twin (same task, fewer steps) check RL; a fast SFT test checks the
loss falls well below the random model's (hand-derived) level.

Reward: 1 when the completion starts with a letter, 0 otherwise; the random tiny model starts
about half the time with one. GRPO with full fine-tuning must push the mean reward above 0.9.
(With LoRA the random tiny model cannot separate the classes: its final norm caps the hidden
state and the frozen tied embeddings are nearly orthogonal random vectors.)
"""

from __future__ import annotations

import json
import math

import pytest
from tests.integration.train.train_helpers import TINY, TOY, metrics, train


@pytest.mark.slow
def test_grpo_raises_reward_from_chance_to_above_0_9(tmp_path, tiny_text_model):
    out = train(
        TINY / "grpo.yaml", tmp_path / "run",
        f"rewards={{components: [{{name: '{TOY}:starts_with_letter'}}]}}",
        "weights.mode=full", "optim.lr=2e-2", "rl.kl.mode=none", "rl.max_new_tokens=2",
        "batch.prompts_per_step=4", "batch.completions_per_prompt=16",
        "batch.micro_batch_per_device=64", "max_steps=25", "checkpoint.every_steps=null",
        "logging.samples_every_steps=null", "logging.tensorboard=false",
    )  # fmt: skip
    rewards = [r["reward/total"] for r in metrics(out)]
    assert 0.3 < sum(rewards[:2]) / 2 < 0.75, rewards  # about chance at the start
    assert sum(rewards[-3:]) / 3 > 0.9, rewards


def test_fast_grpo_raises_reward_and_flat_groups_are_counted(tmp_path, tiny_text_model):
    """The slow test's task in 12 steps (a few seconds): chance at first, > 0.9 at the end; and
    ``rl/zero_variance_groups`` is the share of prompt groups whose sampled rewards were equal,
    recomputed here from the logged samples (one group = one prompt's consecutive rows)."""
    out = train(
        TINY / "grpo.yaml", tmp_path / "run",
        f"rewards={{components: [{{name: '{TOY}:starts_with_letter'}}]}}",
        "weights.mode=full", "optim.lr=2e-2", "rl.kl.mode=none", "rl.max_new_tokens=2",
        "batch.prompts_per_step=4", "batch.completions_per_prompt=16",
        "batch.micro_batch_per_device=64", "max_steps=12", "checkpoint.every_steps=null",
        "logging.samples_every_steps=1", "logging.tensorboard=false",
    )  # fmt: skip
    rows = metrics(out)
    rewards = [r["reward/total"] for r in rows]
    assert 0.3 < sum(rewards[:2]) / 2 < 0.75, rewards  # about chance at the start
    assert sum(rewards[-2:]) / 2 > 0.9, rewards
    for row in rows:
        samples = [json.loads(line) for line in (out / "samples" / f"step-{row['step']}.jsonl")
                   .read_text().splitlines()]  # fmt: skip
        groups = [samples[i : i + 16] for i in range(0, len(samples), 16)]
        assert len(groups) == 4 and all(len({s["id"] for s in g}) == 1 for g in groups)
        flat = sum(len({s["reward"] for s in g}) == 1 for g in groups)
        assert row["rl/zero_variance_groups"] == flat / 4, row["step"]
    assert rows[0]["rl/zero_variance_groups"] < 1 and rows[-1]["rl/zero_variance_groups"] == 1.0


def test_fast_sft_loss_falls_from_uniform_to_half_of_it(tmp_path, tiny_text_model):
    """SFT on the tiny traces: the random model predicts about uniformly over its 1024-token
    vocabulary, so its first loss is about ln(1024) = 6.93 nats; 12 full-weight steps must
    bring the loss below half of that (seeded, deterministic)."""
    out = train(
        TINY / "sft.yaml", tmp_path / "run", "weights.mode=full", "optim.lr=1e-2",
        "optim.scheduler=constant", "optim.warmup_ratio=0", "max_steps=12",
        "eval.every_steps=null", "checkpoint.every_steps=null", "logging.tensorboard=false",
    )  # fmt: skip
    uniform = math.log(1024)
    losses = [r["loss"] for r in metrics(out)]
    assert abs(losses[0] - uniform) < 0.1, losses
    assert max(losses[-3:]) < uniform / 2, losses
