"""RL rollouts through ``rmkit serve`` (``rl.rollout.engine: server``) on the tiny Llama.

- the server engine samples exactly what the local engine samples (greedy, and seeded
  sampling), so 3 GRPO steps end with equal adapters;
- a server rmkit launched dies with its trainer, even a SIGKILLed one;
- a server that is not there, or that dies mid-run, stops the run with a clear error, and
  ``--resume`` then ends where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.integration.train.train_helpers import (
    DENSE_REWARD,
    TINY,
    free_port,
    max_diff,
    metrics,
    rmkit_cmd,
    subprocess_env,
    train,
)

RECIPE = TINY / "grpo.yaml"
# 3 steps of 2 prompts x 4 completions; rewards that vary between completions
COMMON = ("max_steps=3", "rl.kl.mode=none", "checkpoint.every_steps=null", DENSE_REWARD)


@pytest.fixture(scope="module")
def lora_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("adapters")


def _serve(tiny_text_model, **options):
    """``rmkit serve tiny-llama`` with ``options``, in this process (a fresh model load)."""
    from rmkit.models.loading import load_model
    from rmkit.serve import build_app
    from rmkit.serve.server import ModelServer

    app = build_app("tiny-llama", loaded=load_model(str(tiny_text_model)), device="cpu", **options)
    return ModelServer(app, "127.0.0.1", 0)


@pytest.fixture(scope="module")
def tiny_server(tiny_text_model, lora_root):
    """``rmkit serve tiny-llama --enable-lora --lora-root <lora_root>``."""
    with _serve(tiny_text_model, enable_lora=True, lora_root=str(lora_root)) as srv:
        yield srv


@pytest.fixture(scope="module")
def tiny_reload_server(tiny_text_model, lora_root):
    """``rmkit serve tiny-llama --enable-weight-reload --weights-root <lora_root>``."""
    opts = {"enable_weight_reload": True, "weights_root": str(lora_root)}
    with _serve(tiny_text_model, **opts) as srv:
        yield srv


def _final(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "final" / "adapter_model.safetensors"))


def _token_ids(out: Path, step: int) -> list[list[int]]:
    rows = [json.loads(x) for x in (out / "samples" / f"step-{step}.jsonl").open()]
    return [r["token_ids"] for r in rows]


def _server_args(url: str, adapters: Path) -> str:
    return f"rl.rollout={{engine: server, server: {{base_url: '{url}'}}, sync_dir: '{adapters}'}}"


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_server_engine_equals_local_engine(tmp_path, tiny_server, lora_root, temperature):
    """Same tokens every step, and after 3 GRPO steps the same adapter (to 1e-6)."""
    temp = f"rl.temperature={temperature}"
    # one conversation per local generate call: the seeds line up with one request each
    local = train(
        RECIPE, tmp_path / "local", *COMMON, temp,
        "rl.rollout.batch_size=1", "rl.rollout.merge_lora=false",
    )  # fmt: skip
    adapters = lora_root / f"t{temperature}"
    server = train(
        RECIPE, tmp_path / "server", *COMMON, temp, _server_args(tiny_server.url, adapters)
    )
    for step in (1, 2, 3):
        assert _token_ids(server, step) == _token_ids(local, step), f"step {step}"
    rows = metrics(server)
    assert [r["rollout/policy_version"] for r in rows] == [0.0, 1.0, 2.0]
    assert max(r["rollout/logprob_gap_max"] for r in rows) < 1e-4
    a, b = _final(local), _final(server)
    assert max_diff(a, b) <= 1e-6
    if temperature > 0:  # sampled groups differ, so the adapter moved
        moved = max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k)
        assert moved > 0
    # the server keeps only the newest adapters, and the run unloads its own at the end
    import httpx

    listed = [m["id"] for m in httpx.get(tiny_server.url + "/models").json()["data"]]
    assert not [m for m in listed if m.startswith("rmkit-")], listed
    assert sorted(p.name for p in adapters.iterdir() if not p.name.startswith(".")) == [
        "v1",
        "v2",
    ]


def test_full_weight_server_engine_equals_local_engine(tmp_path, tiny_reload_server, lora_root):
    """Full fine-tuning: the trainer's weights replace the server's after every step (tied
    input/output embeddings included), so 3 steps give the same tokens and weights."""
    from tests.integration.train.train_helpers import final_weights

    full = ("weights.mode=full", "optim.lr=1e-3", "rl.temperature=1.0")
    local = train(RECIPE, tmp_path / "local", *COMMON, *full, "rl.rollout.batch_size=1")
    sync = lora_root / "full"
    server = train(
        RECIPE, tmp_path / "server", *COMMON, *full, _server_args(tiny_reload_server.url, sync)
    )
    for step in (1, 2, 3):
        assert _token_ids(server, step) == _token_ids(local, step), f"step {step}"
    rows = metrics(server)
    assert [r["rollout/policy_version"] for r in rows] == [0.0, 1.0, 2.0]
    assert max(r["rollout/logprob_gap_max"] for r in rows) < 1e-4
    assert max_diff(final_weights(local / "final"), final_weights(server / "final")) <= 1e-6
    assert sorted(p.name for p in sync.iterdir()) == ["v2"]


def test_unreachable_server_fails_within_the_readiness_timeout(tmp_path, capsys):
    from rmkit.cli.main import main

    url = f"http://127.0.0.1:{free_port()}/v1"
    t0 = time.monotonic()
    rc = main(
        [
            "train", str(RECIPE), "--output", str(tmp_path / "run"), *COMMON,
            _server_args(url, tmp_path / "ad"), "rl.rollout.ready_timeout_s=2",
        ]
    )  # fmt: skip
    assert rc == 1 and time.monotonic() - t0 < 60
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("error:"))
    assert url in line and "within 2s" in line, line


def _launch_args(steps: int, every: int | None) -> list[str]:
    return [
        f"max_steps={steps}", "rl.kl.mode=none", DENSE_REWARD,
        f"checkpoint.every_steps={every if every else 'null'}",
        "rl.rollout={engine: server, server: {max_retries: 1, "
        "launch: {kind: rmkit, ready_timeout_s: 120, stop_timeout_s: 10}}}",
    ]  # fmt: skip


def _wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _server_pid(out: Path) -> int | None:
    log = out / "server.log"
    if not log.is_file():
        return None
    m = re.search(r"=== rmkit: server pid (\d+)", log.read_text())
    return int(m.group(1)) if m else None


def _steps_done(out: Path) -> int:
    f = out / "metrics.jsonl"
    return len(f.read_text().splitlines()) if f.is_file() else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_launched_server_dies_with_its_trainer(tmp_path, tiny_text_model, sig):
    recipe = RECIPE
    out = tmp_path / "run"
    proc = subprocess.Popen(
        rmkit_cmd("train", str(recipe), "--output", str(out), *_launch_args(1000, None)),
        env=subprocess_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pid = _wait_for(lambda: _server_pid(out), 120, "the server to start")
        _wait_for(lambda: _steps_done(out) >= 1, 180, "the first step")
        assert _alive(pid)
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
        _wait_for(lambda: not _alive(pid), 30, "the server to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGTERM:  # a clean stop: the run closed its server itself
        assert "=== rmkit: server stopped" in (out / "server.log").read_text()


def test_server_killed_mid_run_then_resume_equals_uninterrupted(tmp_path, tiny_text_model):
    recipe = RECIPE
    env = subprocess_env()
    ref = tmp_path / "ref"
    subprocess.run(
        rmkit_cmd("train", str(recipe), "--output", str(ref), *_launch_args(4, 1)),
        env=env, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    out = tmp_path / "run"
    proc = subprocess.Popen(
        rmkit_cmd("train", str(recipe), "--output", str(out), *_launch_args(4, 1)),
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: (out / "checkpoints" / "step-2").is_dir(), 300, "checkpoint 2")
        os.kill(_server_pid(out), signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-2000:]
    line = next(ln for ln in err.splitlines() if ln.startswith("error:"))
    assert "server" in line and ("exited" in line or "gave up" in line), line
    resumed = subprocess.run(
        rmkit_cmd("train", str(recipe), "--output", str(out), "--resume", *_launch_args(4, 1)),
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert max_diff(_final(ref), _final(out)) <= 1e-6
    assert [r["rollout/policy_version"] for r in metrics(out)][-1] == 3.0


def test_local_engine_generates_as_the_policy_did_before_engines(tmp_path):
    """The local engine is the in-process path unchanged: its rollout equals one direct
    ``HFBackend.generate`` call on the step's prompts with LoRA folded in, same seed."""
    from rmkit.config.kinds import load_config
    from rmkit.generation.base import SamplingParams
    from rmkit.generation.hf import HFBackend
    from rmkit.models.lora import merged_lora
    from rmkit.prompts import render_judge_messages
    from rmkit.training.data import judge_order
    from rmkit.training.rl import prepare_rl
    from rmkit.training.rollout import make_rollout, rollout_seed

    cfg = load_config(
        RECIPE, list(COMMON) + ["rl.temperature=1.0"], kind="train",
        base={"output": str(tmp_path / "run")},
    )  # fmt: skip
    run = prepare_rl(cfg)
    try:
        records = run.records[:2]
        ro = make_rollout(run, records, 0)
        convs = [
            render_judge_messages(r, judge_order(r, cfg.seed, 0), run.template, run.image_root)
            for r in records
        ]
        params = SamplingParams(
            n=4, temperature=1.0, top_p=cfg.rl.top_p, max_new_tokens=cfg.rl.max_new_tokens,
            seed=rollout_seed(cfg.seed, 0, 0),
        )  # fmt: skip
        model = run.unwrapped
        model.eval()
        with merged_lora(model, True, None):
            direct = HFBackend(run.loaded, batch_size=cfg.sequences_per_device).generate(
                convs, params
            )
        assert [c.token_ids for c in ro.completions] == [c.token_ids for r in direct for c in r]
        assert ro.stats["decode_s"] > 0 and "policy_version" not in ro.stats
    finally:
        run.reward_fn.close()
        run.engine.close()


@pytest.mark.slow
def test_two_processes_with_a_launched_server_equal_two_local(tmp_path, tiny_text_model):
    """torchrun with 2 processes: the main process launches rmkit serve and syncs adapters,
    both send their own prompts; the result equals the local engine's."""
    from tests.integration.train.train_helpers import final_weights, run_ok, torchrun_cmd

    args = [DENSE_REWARD, "max_steps=2", "rl.kl.mode=none", "checkpoint.every_steps=null"]
    env = subprocess_env()
    local, server = tmp_path / "local", tmp_path / "server"
    run_ok(
        torchrun_cmd(
            2, "train", str(RECIPE), "--output", str(local), *args,
            "rl.rollout.batch_size=1", "rl.rollout.merge_lora=false",
        ),
        env,
    )  # fmt: skip
    run_ok(
        torchrun_cmd(
            2, "train", str(RECIPE), "--output", str(server), *args,
            "rl.rollout={engine: server, server: {launch: {kind: rmkit}}}",
        ),
        env,
    )  # fmt: skip
    assert [r["rollout/policy_version"] for r in metrics(server)] == [0.0, 1.0]
    a, b = final_weights(local / "final"), final_weights(server / "final")
    assert max_diff(a, b) <= 1e-6
    assert "=== rmkit: server stopped" in (server / "server.log").read_text()


def test_asynchronous_rollouts_through_a_server(tmp_path, tiny_server, lora_root):
    """max_staleness 1 with rmkit serve: step t's requests were sent with the adapter of
    version t - 1 while step t - 1 trained; both versions stay loaded meanwhile."""
    adapters = lora_root / "async"
    out = train(
        RECIPE, tmp_path / "run", *COMMON, "rl.temperature=1.0", "rl.top_p=1.0",
        "max_steps=4", _server_args(tiny_server.url, adapters), "rl.rollout.max_staleness=1",
    )  # fmt: skip
    rows = metrics(out)
    assert [r["rollout/policy_version"] for r in rows] == [0.0, 0.0, 1.0, 2.0]
    assert [r["rollout/staleness"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
    # the server's raw log-probs equal the sampled ones at temperature 1, top_p 1: same weights
    # at the first step, the policy's drift after it
    assert rows[0]["rollout/logprob_gap_max"] < 1e-4
    for step in (1, 2, 3, 4):
        samples = [json.loads(x) for x in (out / "samples" / f"step-{step}.jsonl").open()]
        assert {s["policy_version"] for s in samples} == {max(0, step - 2)}
