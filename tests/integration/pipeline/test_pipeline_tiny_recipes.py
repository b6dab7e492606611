"""The tiny twins of the three paper recipes, end to end through ``rmkit run`` on the built-in
tiny models, the fixture data in examples/pipeline/ and local ``rmkit serve`` servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rmkit.cli.main import main

REPO = Path(__file__).resolve().parents[3]


def run_recipe(name: str, out: Path) -> dict:
    assert main(["run", str(REPO / "recipes" / "tiny" / f"{name}.yaml"), "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True
    assert {row["status"] for row in summary["stages"].values()} == {"done"}
    return summary


def metrics(summary: dict, stage: str) -> dict:
    return summary["stages"][stage]["metrics"]


@pytest.fixture(scope="module")
def msrl(tmp_path_factory, tiny_vlm, tiny_text_model) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("msrl") / "run"
    return out, run_recipe("msrl", out)


def test_msrl_twin_runs_every_stage_and_hands_outputs_on(msrl):
    out, summary = msrl
    assert list(summary["stages"]) == [
        "text-data", "text-traces", "sft-format", "text-rl", "mm-data", "captions",
        "caption-mix", "caption-rl", "cmkd", "cmkd-sft", "mm-rl", "eval-vl-rewardbench",
    ]  # fmt: skip
    assert metrics(summary, "text-data")["records"]["train"] == 10
    # the served teacher answered over HTTP, once per record (limit 6, one sample each)
    traces = json.loads((out / "text-traces" / "summary.json").read_text())
    assert traces["records"] == 6 and traces["paid_calls"] == 6 and traces["kept"] == 6
    assert metrics(summary, "captions") == {
        "images": 8,
        "captioned": 8,
        "records": {"train": 8, "val": 0, "test": 0},
    }
    # 4 caption : 1 text from 8 caption and 10 text records -> 8 + 2
    assert metrics(summary, "caption-mix")["records"]["train"] == 10
    mixed = [
        json.loads(line) for line in (out / "caption-mix" / "train.jsonl").read_text().splitlines()
    ]
    assert sum(r["id"].endswith("#caption") for r in mixed) == 8
    assert (
        metrics(summary, "cmkd")["records"] == 4 and metrics(summary, "cmkd")["cmkd_targets"] == 0
    )
    for stage in ("sft-format", "text-rl", "caption-rl", "cmkd-sft", "mm-rl"):
        assert metrics(summary, stage)["steps"] == 1
        assert (out / stage / "final" / "adapter_config.json").is_file()
    assert "reward/task_type" in metrics(summary, "caption-rl")  # the msrl preset from stage 2 on
    assert metrics(summary, "eval-vl-rewardbench")["n_scored"] == 6


def test_msrl_twin_second_run_skips_everything(msrl, capsys):
    out, first = msrl
    stamp = (out / "mm-rl" / "final" / "adapter_model.safetensors").stat().st_mtime_ns
    summary = run_recipe("msrl", out)
    assert {row["action"] for row in summary["stages"].values()} == {"skipped"}
    assert summary["metrics"] == first["metrics"]
    assert (out / "mm-rl" / "final" / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_r1_reward_twin(tmp_path, tiny_vlm, tiny_text_model):
    out = tmp_path / "run"
    summary = run_recipe("r1-reward", out)
    assert metrics(summary, "sft-traces") == {"records": 8, "kept": 8, "rejected": 0}
    # attempts: every trace is kept at its first attempt here (the twin keeps all traces) and
    # labelled so; the hard subset (2+ attempts or never solved) is empty
    traces = [json.loads(x) for x in (out / "sft-traces" / "traces.jsonl").read_text().splitlines()]
    assert {(t["meta"]["attempts"], t["meta"]["difficulty"]) for t in traces} == {(1, 1)}
    assert (out / "sft-traces" / "hard.jsonl").read_text() == ""
    assert metrics(summary, "rl-data")["records"]["train"] == 8
    rl = metrics(summary, "rl")
    assert rl["steps"] == 2
    # StableReinforce with the r1 combiner: format, accuracy and the served consistency judge
    assert {"reward/format", "reward/accuracy", "reward/consistency", "adv/filtered_frac"} <= set(
        rl
    )
    config = (out / "rl" / "config.yaml").read_text()
    assert "stable_reinforce" in config and "http://127.0.0.1:" in config
    assert "filter_rule: released" in config and "protocol: released" in config
    # the released RL trains every parameter: the vision tower moved from the base model's
    from safetensors.torch import load_file

    from rmkit.models.registry import resolve_model

    base = {}
    for f in resolve_model("tiny-qwen2.5-vl").glob("*.safetensors"):
        base.update(load_file(f))
    final = {}
    for f in (out / "rl" / "final").glob("*.safetensors"):
        final.update(load_file(f))
    vision = [k for k in base if k.startswith(("visual.", "model.visual."))]
    assert vision, sorted(base)[:5]
    moved = [k for k in vision if k in final and not torch.equal(base[k], final[k])]
    assert moved, "no vision-tower parameter changed in RL"
    # 2 PPO mini-batches per rollout batch: the first is on-policy, the second off-policy
    rows = [json.loads(x) for x in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["policy/update1/ratio_max"] == 1.0 for r in rows)
    assert max(r["policy/update2/clip_frac"] for r in rows) > 0
    assert metrics(summary, "eval-vl-rewardbench")["n_scored"] == 6


def test_unifiedreward_think_twin(tmp_path, tiny_vlm):
    out = tmp_path / "run"
    summary = run_recipe("unifiedreward-think", out)
    assert metrics(summary, "generation-data")["records"]["train"] == 6
    assert metrics(summary, "understanding-data")["records"]["train"] == 6
    for stage in ("rs-generation", "rs-understanding"):
        # a random model is never right: every record goes to the GRPO set
        assert (
            metrics(summary, stage)["rl_records"] == 4
            and metrics(summary, stage)["sft_records"] == 0
        )
        rl_set = (out / stage / "rl.jsonl").read_text().splitlines()
        assert len(rl_set) == 4
    for stage in ("grpo-generation", "grpo-understanding"):
        assert metrics(summary, stage)["steps"] == 1
    assert "unified-generation" in (out / "grpo-generation" / "config.yaml").read_text()
    assert metrics(summary, "eval-vl-rewardbench")["n_scored"] == 6
