"""Periodic checkpoints and ``--resume`` of sharded runs on the CPU: two processes under torchrun
(gloo) with FSDP2 (``ACCELERATE_USE_FSDP=true``: accelerate does not shard on the CPU, so rmkit
applies ``fully_shard`` itself) and with DeepSpeed ZeRO-2 and ZeRO-3 (when deepspeed is
installed; accelerate's ``save_state``).

A killed run is SIGKILLed (every process) while it blocks in step 3's scoring, after the step-2
checkpoint; resumed, it ends with the parameters of an uninterrupted run of the same launch.
Rollout seeds depend on (seed, step, process), so a sampled two-process run and a one-process
run draw different completions: the comparison with one process uses greedy rollouts
(Reinforce++, whose advantages are whitened over the batch, so greedy rollouts still move the
policy) and SFT.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

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
    torchrun_cmd,
)

FSDP = {"ACCELERATE_USE_FSDP": "true"}
ZERO2 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}
ZERO3 = {**ZERO2, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
         "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true"}  # fmt: skip
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed"
)
GRPO, REINFORCE_PP, SFT = (str(TINY / n) for n in ("grpo.yaml", "reinforce_pp.yaml", "sft.yaml"))
BLOCKING = f"rewards={{components: [{{name: '{TOY}:blocking_alpha_fraction'}}]}}"
COMMON = [
    "checkpoint.every_steps=2", "checkpoint.keep_last=1", "logging.tensorboard=false",
    "logging.plot=false",
]  # fmt: skip
RL_ARGS = [BLOCKING, "max_steps=4", *COMMON]
# recipes/tiny/grpo.yaml: 2 prompts x 4 completions per step, one prompt per process
CALLS_PER_STEP = 4


def two(out: Path, recipe: str, *args: str) -> list[str]:
    return torchrun_cmd(2, "train", recipe, "--output", str(out), *args)


def one(out: Path, recipe: str, *args: str) -> list[str]:
    return rmkit_cmd("train", recipe, "--output", str(out), *args)


def kill_after_checkpoint(cmd: list[str], env: dict[str, str], out: Path, tmp: Path) -> None:
    """Run ``cmd`` until every process blocks in step 3, then SIGKILL the launcher and every
    process it started (torchrun starts its workers in their own sessions)."""
    import psutil

    marker = tmp / f"blocked-{out.name}"
    env = dict(
        env, RMKIT_TEST_BLOCK_AFTER=str(2 * CALLS_PER_STEP), RMKIT_TEST_BLOCK_FILE=str(marker)
    )
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the run never reached step 3"
        time.sleep(0.2)
    time.sleep(0.5)  # let the other process reach the block too
    victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in victims:
        p.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(victims, timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert (out / "checkpoints" / "step-2" / "state.json").is_file()
    assert not (out / "final").exists()
    assert [r["step"] for r in metrics(out)] == [1, 2]


def resume(cmd: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    assert "resumed from" in proc.stderr
    return proc.stderr


def same_metrics(a: Path, b: Path, keys=("reward/total", "loss")) -> None:
    ra, rb = metrics(a), metrics(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        for key in keys:
            assert x[key] == pytest.approx(y[key], abs=1e-7), (key, x["step"])


def copy_to_step_2(src: Path, dst: Path) -> None:
    """The output of ``src`` as it was when the step-2 checkpoint was written (a later step's
    metrics line is cut back by the resume itself)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("final", "curves.png"))


def test_fsdp_resume_from_a_periodic_checkpoint_matches_uninterrupted(tmp_path, tiny_text_model):
    """Default suite (small): a 3-step FSDP GRPO run writes a sharded checkpoint at step 2;
    resuming a copy of its output from there gives the same final adapter."""
    env = subprocess_env(**FSDP)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = [f"rewards={{components: [{{name: '{TOY}:alpha_fraction'}}]}}", "max_steps=3", *COMMON]
    run_ok(two(straight, GRPO, *args), env)
    ckpt = straight / "checkpoints" / "step-2"
    state = json.loads((ckpt / "state.json").read_text())
    assert (state["world_size"], state["sharding"], state["step"]) == (2, "fsdp2", 2)
    assert (ckpt / "dcp" / ".metadata").is_file()
    assert {p.name for p in ckpt.glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}
    assert (straight / "final" / "adapter_model.safetensors").is_file()  # a normal PEFT adapter

    copy_to_step_2(straight, resumed)
    log = resume(two(resumed, GRPO, *args), env)
    assert "sharding fsdp2" in log and "FSDP2 applied by rmkit" in log
    assert max_diff(final_weights(straight / "final"), final_weights(resumed / "final")) <= 1e-6
    same_metrics(straight, resumed)


@pytest.mark.slow
def test_fsdp_grpo_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_text_model):
    env = subprocess_env(**FSDP)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_ok(two(straight, GRPO, *RL_ARGS), env)
    kill_after_checkpoint(two(killed, GRPO, *RL_ARGS), env, killed, tmp_path)

    # a different launch refuses the checkpoint before touching it
    ddp = subprocess.run(
        two(killed, GRPO, *RL_ARGS) + ["--resume"], env=subprocess_env(), capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert ddp.returncode != 0
    assert "written with sharding 'fsdp2', this run uses 'none'" in ddp.stderr

    resume(two(killed, GRPO, *RL_ARGS), env)
    assert max_diff(final_weights(straight / "final"), final_weights(killed / "final")) <= 1e-6
    same_metrics(straight, killed)
    assert [r["step"] for r in metrics(killed)] == [1, 2, 3, 4]
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-2"]


@pytest.mark.slow
def test_fsdp_greedy_rl_killed_and_resumed_equals_one_process(tmp_path, tiny_text_model):
    """Reinforce++ with greedy rollouts: the same completions on one process and on two, so a
    killed and resumed FSDP run ends where one process with the whole batch ends."""
    args = [BLOCKING, "max_steps=4", "rl.temperature=0", *COMMON]
    single, killed = tmp_path / "single", tmp_path / "killed"
    run_ok(one(single, REINFORCE_PP, *args), subprocess_env())
    env = subprocess_env(**FSDP)
    kill_after_checkpoint(two(killed, REINFORCE_PP, *args), env, killed, tmp_path)
    resume(two(killed, REINFORCE_PP, *args), env)
    a, b = final_weights(single / "final"), final_weights(killed / "final")
    assert max(float(v.abs().max()) for v in a.values()) > 0  # the steps did something
    assert max_diff(a, b) <= 1e-5
    same_metrics(single, killed, keys=("reward/total",))


@pytest.mark.slow
@pytest.mark.parametrize(
    "launch",
    [pytest.param(FSDP, id="fsdp2"), pytest.param(ZERO3, id="zero3", marks=needs_deepspeed)],
)
def test_sft_resume_equals_uninterrupted_and_one_process(tmp_path, tiny_text_model, launch):
    """SFT with two micro-batches per process (FSDP2: gradients accumulate unsynced, then one
    reduce-scatter; ZeRO-3: parameters partitioned too) and a cosine schedule. FSDP2 also runs
    the held-out evaluation (the main process generates alone, on gathered weights); under
    ZeRO-3 a forward pass is collective, so evaluation is off."""
    args = ["max_steps=3", "batch.sequences_per_step=8", "batch.micro_batch_per_device=2", *COMMON]
    if launch is ZERO3:
        args.append("eval.every_steps=null")
    single, straight, resumed = tmp_path / "single", tmp_path / "straight", tmp_path / "resumed"
    run_ok(one(single, SFT, *args), subprocess_env())
    env = subprocess_env(**launch)
    run_ok(two(straight, SFT, *args), env)
    copy_to_step_2(straight, resumed)
    resume(two(resumed, SFT, *args), env)
    a, b, c = (final_weights(p / "final") for p in (single, straight, resumed))
    assert max_diff(b, c) <= 1e-6
    assert max_diff(a, c) <= 1e-5
    same_metrics(straight, resumed, keys=("loss",))
    assert [r["loss"] for r in metrics(single)] == pytest.approx(
        [r["loss"] for r in metrics(resumed)], abs=1e-6
    )
    if launch is FSDP:
        assert "eval/accuracy" in metrics(resumed)[-1]


@pytest.mark.slow
@needs_deepspeed
def test_deepspeed_zero2_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_text_model):
    """DeepSpeed ZeRO-2 on the CPU (gloo): accelerate's save_state writes each rank's optimizer
    partition; the resumed run equals an uninterrupted one, and both equal the FSDP run."""
    env = subprocess_env(**ZERO2)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_ok(two(straight, GRPO, *RL_ARGS), env)
    kill_after_checkpoint(two(killed, GRPO, *RL_ARGS), env, killed, tmp_path)
    ckpt = killed / "checkpoints" / "step-2"
    assert json.loads((ckpt / "state.json").read_text())["sharding"] == "deepspeed-zero2"
    parts = sorted(p.name for p in (ckpt / "accelerate" / "pytorch_model").iterdir())
    assert [p for p in parts if p.startswith("zero_pp_rank_")] == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    resume(two(killed, GRPO, *RL_ARGS), env)
    assert max_diff(final_weights(straight / "final"), final_weights(killed / "final")) <= 1e-6
    same_metrics(straight, killed)
    fsdp = tmp_path / "fsdp"
    run_ok(two(fsdp, GRPO, *RL_ARGS), subprocess_env(**FSDP))
    assert max_diff(final_weights(straight / "final"), final_weights(fsdp / "final")) <= 1e-5
