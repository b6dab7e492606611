"""A run killed with SIGKILL and resumed ends where an uninterrupted run ends.

The RL run uses a reward that, when told to, blocks after a number of calls: the killed run
blocks in step 3's scoring (after the step-2 checkpoint was written) and is SIGKILLed there.
Resuming restores weights, optimizer, scheduler, RNG states and the data position, and the
rollout seeds depend only on (seed, step, rank), so the end state is the same.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from tests.integration.train.train_helpers import (
    TINY,
    TOY,
    final_weights,
    max_diff,
    metrics,
    rmkit_cmd,
    run_ok,
    subprocess_env,
    train,
)

ARGS = [
    f"rewards={{components: [{{name: '{TOY}:blocking_alpha_fraction'}}]}}",
    "max_steps=4", "checkpoint.every_steps=2", "checkpoint.keep_last=1", "logging.tensorboard=false",
]  # fmt: skip
PER_STEP = 2 * 4  # prompts_per_step x completions_per_prompt of recipes/tiny/grpo.yaml


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_text_model):
    recipe = str(TINY / "grpo.yaml")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_ok(rmkit_cmd("train", recipe, "--output", str(straight), *ARGS), subprocess_env())

    marker = tmp_path / "blocked"
    env = subprocess_env(
        RMKIT_TEST_BLOCK_AFTER=str(2 * PER_STEP), RMKIT_TEST_BLOCK_FILE=str(marker)
    )
    proc = subprocess.Popen(
        rmkit_cmd("train", recipe, "--output", str(killed), *ARGS), env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the run never reached step 3"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (killed / "checkpoints" / "step-2" / "state.json").is_file()
    assert not (killed / "final").exists()
    assert [r["step"] for r in metrics(killed)] == [1, 2]

    run_ok(rmkit_cmd("train", recipe, "--output", str(killed), "--resume", *ARGS), subprocess_env())
    a, b = final_weights(straight / "final"), final_weights(killed / "final")
    assert max_diff(a, b) <= 1e-6
    ra, rb = metrics(straight), metrics(killed)
    assert [r["step"] for r in rb] == [1, 2, 3, 4]
    for x, y in zip(ra, rb, strict=True):
        assert x["reward/total"] == y["reward/total"]
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-7)
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-2"]


def test_fast_crash_then_resume_matches_uninterrupted(tmp_path, tiny_text_model, monkeypatch):
    """The same check in this process (no start-up to pay): the run crashes in step 3's
    scoring (an exception from the reward, after the step-2 checkpoint) instead of being
    SIGKILLed, and ``--resume`` in the same process ends where the straight run ends."""
    args = [
        f"rewards={{components: [{{name: '{TOY}:failing_alpha_fraction'}}]}}",
        "max_steps=4", "checkpoint.every_steps=2", "checkpoint.keep_last=1",
        "rl.max_new_tokens=8", "logging.samples_every_steps=null", "logging.tensorboard=false",
    ]  # fmt: skip
    recipe = str(TINY / "grpo.yaml")
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    train(recipe, straight, *args)

    from rmkit.cli.main import main

    monkeypatch.setenv("RMKIT_TEST_FAIL_AFTER", str(2 * PER_STEP))
    assert main(["train", recipe, "--output", str(crashed), *args]) != 0
    assert (crashed / "checkpoints" / "step-2" / "state.json").is_file()
    assert not (crashed / "final").exists()
    assert [r["step"] for r in metrics(crashed)] == [1, 2]

    monkeypatch.delenv("RMKIT_TEST_FAIL_AFTER")
    train(recipe, crashed, "--resume", *args)
    a, b = final_weights(straight / "final"), final_weights(crashed / "final")
    assert max_diff(a, b) <= 1e-6
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 0  # it trained
    ra, rb = metrics(straight), metrics(crashed)
    assert [r["step"] for r in rb] == [1, 2, 3, 4]
    for x, y in zip(ra, rb, strict=True):
        assert x["reward/total"] == y["reward/total"]
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-7)
    assert sorted(p.name for p in (crashed / "checkpoints").iterdir()) == ["step-2"]
