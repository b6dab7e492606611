"""The full-scale paper recipes validate, print their plan, and carry the papers' settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from rmkit.cli.main import main
from rmkit.config.kinds import load_config

REPO = Path(__file__).resolve().parents[3]
RECIPES = ["msrl", "r1-reward", "unifiedreward-think"]


def stages(name: str, tmp_path: Path) -> dict:
    cfg = load_config(REPO / "recipes" / f"{name}.yaml", kind="pipeline")
    return {s.name: s for s in cfg.resolve(tmp_path / "run")}


@pytest.mark.parametrize("name", RECIPES)
def test_validates_and_dry_run_prints_the_plan(name, tmp_path, capsys):
    recipe = REPO / "recipes" / f"{name}.yaml"
    assert main(["recipes", "validate", str(recipe)]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["run", str(recipe), "--output", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for stage in stages(name, tmp_path).values():
        assert stage.name in out and stage.kind in out
    assert "pending" in out and "accelerate.commands.launch --config_file" in out
    # the resolved settings of every training stage, algorithm defaults filled in
    for stage in stages(name, tmp_path).values():
        if stage.kind == "train" and stage.config.stage == "rl":
            line = next(x for x in out.splitlines() if x.startswith(f"{stage.name} settings: "))
            rl = stage.config.rl
            for shown in (f"rl.algorithm={rl.algorithm}", f"rl.aggregation={rl.aggregation}",
                          f"rl.kl.mode={rl.kl.mode}", f"rl.top_p={rl.top_p}"):  # fmt: skip
                assert shown in line
    assert not (tmp_path / "run").exists()


def test_msrl_settings(tmp_path):
    s = stages("msrl", tmp_path)
    assert s["sft-format"].config.model.spec == "OpenGVLab/InternVL3_5-8B-HF"
    sft, cmkd_sft = s["sft-format"].config, s["cmkd-sft"].config
    assert (sft.optim.lr, sft.optim.warmup_ratio, sft.epochs) == (1e-5, 0.05, 3)
    assert sft.weights.freeze_vision_tower and sft.weights.freeze_projector
    assert (cmkd_sft.optim.lr, cmkd_sft.epochs) == (2e-6, 1)
    assert not cmkd_sft.weights.freeze_vision_tower and not cmkd_sft.weights.freeze_projector
    for name in ("text-rl", "caption-rl", "mm-rl"):
        c = s[name].config
        assert c.rl.algorithm == "dr_grpo" and c.rl.kl.mode == "none" and c.optim.lr == 1e-6
        assert (c.rl.clip_low, c.rl.clip_high, c.rl.temperature, c.rl.max_new_tokens) == (
            0.2,
            0.28,
            1.0,
            1024,
        )
        assert c.batch.prompts_per_step * c.batch.completions_per_prompt == 128
        assert c.batch.completions_per_prompt == 8 and c.epochs == 1
        weights = {r.key or r.name: r.weight for r in c.rewards.components}
        assert weights["accuracy"] == 1.0 and weights["format"] == 0.2
        assert weights.get("task_type", 0.2) == 0.2  # the paper's 0.2, not the released 0.04
        # ms-swift's sampling and loss defaults, which the released scripts inherit
        assert (c.rl.top_k, c.rl.top_p, c.rl.aggregation) == (50, 0.9, "seq_mean")
    for stage in s.values():
        if stage.kind == "train":
            assert stage.config.optim.weight_decay == 0.1
            assert stage.config.optim.betas == (0.9, 0.95)
    single, vote5 = s["eval-vl-rewardbench"].config, s["eval-vl-rewardbench-vote5"].config
    assert (single.votes, single.sampling.temperature, vote5.votes) == (1, 0.0, 5)
    assert "task_type" in {r.name for r in s["caption-rl"].config.rewards.components}
    assert [p.weight for p in s["caption-mix"].config.parts] == [4, 1]
    assert s["cmkd"].config.sampling.samples == 8
    assert s["sft-format"].launch.accelerate_config.endswith("deepspeed-zero2.yaml")


def test_r1_reward_settings(tmp_path):
    s = stages("r1-reward", tmp_path)
    sft, rl = s["sft"].config, s["rl"].config
    assert sft.model.spec == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert (sft.optim.lr, sft.epochs, sft.batch.sequences_per_step) == (1e-5, 1, 256)
    assert rl.rl.algorithm == "stable_reinforce" and rl.batch.completions_per_prompt == 1
    # the released split: rollouts of 256 prompts, optimizer steps of 128
    assert (rl.batch.prompts_per_step, rl.batch.prompts_per_update, rl.mini_batches) == (
        256,
        128,
        2,
    )
    assert rl.rl.rollout.engine == "server" and rl.rl.rollout.server.launch.kind == "vllm"
    assert (rl.optim.lr, rl.rl.kl.coef, rl.epochs) == (
        1e-6,
        0.0,
        5,
    )  # the paper, not 3e-7 / 1e-3 / 1
    assert rl.rl.preclip and rl.rl.filter_sigma == 3.0 and rl.optim.betas == (0.9, 0.95)
    assert rl.rewards.combiner == "r1"
    consistency = next(r for r in rl.rewards.components if r.name == "consistency")
    # the released judge protocol and scores, the released filter and loss aggregation
    assert (consistency.options["protocol"], consistency.options["variant"]) == (
        "released",
        "signed",
    )
    assert (rl.rl.filter_rule, rl.rl.aggregation, rl.rl.repetition_penalty) == (
        "released",
        "seq_mean",
        1.0,
    )
    # RL trains the vision tower (released train.sh), SFT keeps it frozen
    assert not rl.weights.freeze_vision_tower and not rl.weights.freeze_projector
    assert sft.weights.freeze_vision_tower
    assert sft.model.max_pixels == rl.model.max_pixels == 501760
    traces = s["sft-traces"].config
    assert (traces.sampling.attempts, traces.sampling.temperature) == (3, 0.0)
    assert traces.hard.min_difficulty == 2
    # the paper's single-sample row and voting@5 as separate evaluations
    single, vote5 = s["eval-vl-rewardbench"].config, s["eval-vl-rewardbench-vote5"].config
    assert (single.votes, vote5.votes) == (1, 5)
    fmt = next(r for r in rl.rewards.components if r.name == "format")
    assert fmt.options["mode"] == "strict"
    assert s["sft"].launch.accelerate_config.endswith("deepspeed-zero3.yaml")


def test_unifiedreward_think_settings(tmp_path):
    s = stages("unifiedreward-think", tmp_path)
    for name in ("cold-start", "rs-sft-generation", "rs-sft-understanding"):
        c = s[name].config
        assert (c.optim.lr, c.optim.scheduler, c.optim.warmup_ratio, c.epochs) == (
            2.5e-6,
            "cosine",
            0.03,
            3,
        )
        assert c.batch.sequences_per_step == 128 and c.data.max_seq_tokens == 13000
    for name, template in (
        ("grpo-generation", "unified-generation"),
        ("grpo-understanding", "unified-understanding"),
    ):
        c = s[name].config
        assert c.rl.algorithm == "grpo" and (c.rl.kl.mode, c.rl.kl.coef) == ("k3_loss", 0.04)
        assert (c.batch.prompts_per_step, c.batch.completions_per_prompt) == (128, 8)
        assert (c.rl.temperature, c.rl.top_p, c.rl.updates_per_batch, c.optim.lr) == (
            1.0,
            0.95,
            1,
            1e-6,
        )
        assert c.data.template == template
        assert c.data.path.endswith(("rs-generation/rl.jsonl", "rs-understanding/rl.jsonl"))
    cold = s["cold-start-traces"].config
    assert cold.filters.correct and (cold.sample, cold.limit) == (10000, None)
    for name in ("rs-generation", "rs-understanding"):
        assert s[name].config.rejection.rl == "wrong"
    assert s["cold-start"].config.model.spec == "CodeGoat24/UnifiedReward-qwen-7b"
    for name in ("grpo-generation", "grpo-understanding"):
        c = s[name].config
        assert c.model.max_pixels == 147456 and c.rl.aggregation == "seq_mean"
    assert s["eval-vl-rewardbench"].config.votes == 1
