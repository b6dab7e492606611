"""Two processes with B sequences each take the same step as one process with 2B.

The global batch of a step is the same records (split by position over processes); the loss is
normalised by the step's token count summed over processes, and data-parallel training averages
the processes' gradients, so one step gives the same parameters up to float rounding.
"""

from __future__ import annotations

import pytest
from tests.integration.train.train_helpers import (
    DENSE_REWARD,
    TINY,
    final_weights,
    max_diff,
    metrics,
    rmkit_cmd,
    run_ok,
    subprocess_env,
    torchrun_cmd,
    train,
)


def one_and_two_processes(tmp_path, recipe: str, *args: str):
    one, two = tmp_path / "one", tmp_path / "two"
    env = subprocess_env()
    run_ok(rmkit_cmd("train", recipe, "--output", str(one), *args), env)
    run_ok(torchrun_cmd(2, "train", recipe, "--output", str(two), *args), env)
    return one, two


@pytest.mark.slow
def test_sft_two_processes_equal_one(tmp_path, tiny_text_model):
    args = [
        "max_steps=1",
        "batch.sequences_per_step=8",
        "batch.micro_batch_per_device=2",
        "logging.tensorboard=false",
    ]
    one, two = one_and_two_processes(tmp_path, str(TINY / "sft.yaml"), *args)
    a, b = final_weights(one / "final"), final_weights(two / "final")
    assert max_diff(a, b) <= 1e-5
    assert max(float(v.abs().max()) for v in a.values()) > 0  # the step did something
    assert metrics(one)[0]["loss"] == pytest.approx(metrics(two)[0]["loss"], abs=1e-6)
    assert metrics(one)[0]["tokens/supervised"] == metrics(two)[0]["tokens/supervised"]


@pytest.mark.slow
def test_rl_two_processes_equal_one_with_greedy_rollouts(tmp_path, tiny_text_model):
    """Reinforce++ whitens returns over the whole rollout batch: the processes gather it. Two
    launches (one and two processes) of one step over 8 prompts (the fast version runs 4, one
    of them in this process); a repetition penalty makes the greedy completions differ between
    prompts, so the rewards vary and the gradient is real."""
    args = [
        DENSE_REWARD, "max_steps=1", "rl.temperature=0", "rl.repetition_penalty=3.0",
        "rl.max_new_tokens=8", "batch.prompts_per_step=8", "batch.micro_batch_per_device=1",
        "logging.tensorboard=false",
    ]  # fmt: skip
    one, two = one_and_two_processes(tmp_path, str(TINY / "reinforce_pp.yaml"), *args)
    m1, m2 = metrics(one)[0], metrics(two)[0]
    assert m1["reward/total"] == pytest.approx(m2["reward/total"], abs=1e-9)  # same rollouts
    assert m1["grad_norm"] > 1e-3
    assert m1["grad_norm"] == pytest.approx(m2["grad_norm"], rel=1e-4)
    a, b = final_weights(one / "final"), final_weights(two / "final")
    assert max_diff(a, b) <= 1e-5
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 1e-4  # it moved


def test_fast_sft_two_processes_equal_one(tmp_path, tiny_text_model):
    """The slow SFT check at the cost of one launch: one process runs in this process."""
    args = [
        "max_steps=1", "batch.sequences_per_step=8", "batch.micro_batch_per_device=2",
        "eval.every_steps=null", "checkpoint.every_steps=null", "logging.tensorboard=false",
    ]  # fmt: skip
    recipe = str(TINY / "sft.yaml")
    one = train(recipe, tmp_path / "one", *args)
    two = tmp_path / "two"
    run_ok(torchrun_cmd(2, "train", recipe, "--output", str(two), *args), subprocess_env())
    a, b = final_weights(one / "final"), final_weights(two / "final")
    assert max_diff(a, b) <= 1e-5
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 1e-4  # it moved
    m1, m2 = metrics(one)[0], metrics(two)[0]
    assert m1["loss"] == pytest.approx(m2["loss"], abs=1e-6)
    assert m1["tokens/supervised"] == m2["tokens/supervised"]


def test_fast_rl_two_processes_equal_one(tmp_path, tiny_text_model):
    """The RL check at the cost of one launch: one process runs in this process, two with
    torchrun. Greedy rollouts (the same in both; a repetition penalty makes the random tiny
    model's completions differ between prompts, so the letter-share reward varies) of 4
    prompts; Reinforce++ whitens the returns over the batch gathered from both processes.
    (Groups of identical greedy completions would cancel under a group baseline: one
    completion per prompt keeps the gradient real.)"""
    args = [
        DENSE_REWARD, "max_steps=1", "rl.temperature=0", "rl.repetition_penalty=3.0",
        "rl.max_new_tokens=8", "rl.kl.mode=none", "batch.prompts_per_step=4",
        "batch.micro_batch_per_device=1", "checkpoint.every_steps=null",
        "logging.samples_every_steps=null", "logging.tensorboard=false",
    ]  # fmt: skip
    recipe = str(TINY / "reinforce_pp.yaml")
    one = train(recipe, tmp_path / "one", *args)
    two = tmp_path / "two"
    run_ok(torchrun_cmd(2, "train", recipe, "--output", str(two), *args), subprocess_env())
    m1, m2 = metrics(one)[0], metrics(two)[0]
    assert m1["reward/total"] == pytest.approx(m2["reward/total"], abs=1e-9)  # same rollouts
    assert m1["grad_norm"] > 1e-3 and m1["grad_norm"] == pytest.approx(m2["grad_norm"], rel=1e-4)
    assert m1["loss"] == pytest.approx(m2["loss"], abs=1e-6)
    a, b = final_weights(one / "final"), final_weights(two / "final")
    assert max_diff(a, b) <= 1e-5
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 1e-4  # it moved
