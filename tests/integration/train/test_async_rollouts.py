"""Asynchronous rollouts with bounded staleness (``rl.rollout.max_staleness``) on tiny-llama.

With the local engine the rollouts come from a generator process of its own, which generates
exactly as the synchronous local engine would with the same weights. Step t's rollout must be exactly what the policy after step t - K generates:
the test regenerates it from the checkpoint of that step and compares the tokens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from tests.integration.train.train_helpers import (
    DENSE_REWARD,
    TINY,
    final_weights,
    max_diff,
    metrics,
    rmkit_cmd,
    subprocess_env,
    train,
)

# One sampled completion per prompt (a random model's greedy answers are all alike, so they
# would give no learning signal); Reinforce++ normalises the dense reward over the batch.
RECIPE = TINY / "reinforce_pp.yaml"
COMMON = (
    DENSE_REWARD, "rl.kl.mode=none", "rl.temperature=1.0", "rl.top_p=1.0",
    "batch.prompts_per_step=4", "optim.lr=3e-3",
)  # fmt: skip
ASYNC = ("rl.rollout.max_staleness=1", "rl.rollout.merge_lora=false")


def _rows(out: Path, step: int) -> list[dict]:
    return [json.loads(x) for x in (out / "samples" / f"step-{step}.jsonl").open()]


def test_staleness_zero_is_the_synchronous_loop(tmp_path):
    a = train(RECIPE, tmp_path / "a", *COMMON, "max_steps=2")
    b = train(RECIPE, tmp_path / "b", *COMMON, "max_steps=2", "rl.rollout.max_staleness=0")
    wa, wb = final_weights(a / "final"), final_weights(b / "final")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_rollout_of_step_t_is_the_policy_after_step_t_minus_1(tmp_path):
    from safetensors.torch import load_file

    from rmkit.config.kinds import load_config
    from rmkit.generation.base import SamplingParams
    from rmkit.generation.hf import HFBackend
    from rmkit.training.model import build_policy
    from rmkit.training.rollout import rollout_seed

    steps = 4
    out = train(
        RECIPE, tmp_path / "run", *COMMON, *ASYNC, f"max_steps={steps}",
        "checkpoint.every_steps=1", f"checkpoint.keep_last={steps}",
    )  # fmt: skip
    rows = metrics(out)
    assert [r["rollout/policy_version"] for r in rows] == [0.0, 0.0, 1.0, 2.0]
    assert [r["rollout/staleness"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
    assert rows[0]["rollout/logprob_gap_max"] < 1e-4  # same weights on both sides at step 1
    cfg = load_config(RECIPE, list(COMMON), kind="train", base={"output": "unused"})
    policy = build_policy(cfg)
    initial = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    moved = 0.0
    for step in range(1, steps + 1):  # metrics' step s trained on the rollout of index s-1
        version = max(0, step - 2)  # the policy after step (s - 1) - 1
        params = dict(policy.model.named_parameters())
        with torch.no_grad():
            if version == 0:
                for n, v in initial.items():
                    params[n].copy_(v)
            else:
                saved = load_file(out / "checkpoints" / f"step-{version}" / "trainable.safetensors")
                for n, v in saved.items():
                    params[n].copy_(v)
                moved = max(moved, max(float((saved[n] - initial[n]).abs().max()) for n in saved))
        # what the synchronous local engine generates with these weights: the step's prompts
        # in one call, seeded with the rollout's own step's seed
        backend = HFBackend(policy, batch_size=cfg.sequences_per_device)
        samples = _rows(out, step)
        params = SamplingParams(
            n=1, temperature=1.0, max_new_tokens=cfg.rl.max_new_tokens,
            seed=rollout_seed(cfg.seed, step - 1, 0),
        )  # fmt: skip
        again = backend.generate([s["prompt"] for s in samples], params)
        assert [r[0].token_ids for r in again] == [s["token_ids"] for s in samples], step
        assert {s["policy_version"] for s in samples} == {version}
    assert moved > 1e-3  # the policy really changed between versions


def _checkpoints(out: Path) -> list[int]:
    folder = out / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(
        int(p.name.split("-")[1]) for p in folder.glob("step-*") if (p / "state.json").is_file()
    )


def test_sigkill_then_resume_equals_an_uninterrupted_async_run(tmp_path, tiny_text_model):
    args = [
        *COMMON, *ASYNC, "max_steps=5", "checkpoint.every_steps=1", "checkpoint.keep_last=5",
    ]  # fmt: skip
    env = subprocess_env()
    ref = tmp_path / "ref"
    subprocess.run(
        rmkit_cmd("train", str(RECIPE), "--output", str(ref), *args),
        env=env, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    out = tmp_path / "run"
    proc = subprocess.Popen(
        rmkit_cmd("train", str(RECIPE), "--output", str(out), *args),
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        import time

        deadline = time.monotonic() + 300
        while 2 not in _checkpoints(out) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 2 in _checkpoints(out) and not (out / "final").exists()
    hooks = json.loads((out / "checkpoints" / "step-2" / "hooks.json").read_text())
    assert [p["step"] for p in hooks["rollout_queue"]["ranks"][0]] == [2]  # step 3's rollout
    resumed = subprocess.run(
        rmkit_cmd("train", str(RECIPE), "--output", str(out), "--resume", *args),
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert max_diff(final_weights(ref / "final"), final_weights(out / "final")) <= 1e-6
    assert [r["rollout/policy_version"] for r in metrics(out)] == [0.0, 0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("bad", ["rl.rollout.sync_every=2", "rl.rollout.threads=1"])
def test_async_config_rules(bad):
    from rmkit.config.kinds import load_config
    from rmkit.errors import ConfigError

    extra = [] if "threads" in bad else ["rl.rollout.max_staleness=1"]
    with pytest.raises(ConfigError, match="max_staleness"):
        load_config(RECIPE, [*extra, bad], kind="train", base={"output": "x"})
