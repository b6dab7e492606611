"""TrainConfig: validation messages, derived batch values, algorithm defaults, recipe paths."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rmkit.config.kinds import load_config
from rmkit.config.validate import validate_config
from rmkit.errors import ConfigError
from rmkit.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "recipes" / "tiny"


def rl_cfg(**over) -> dict:
    cfg = {
        "stage": "rl",
        "data": {"path": "x.jsonl"},
        "batch": {"prompts_per_step": 4, "completions_per_prompt": 4, "micro_batch_per_device": 3},
        "rl": {"algorithm": "grpo"},
        "rewards": {"components": [{"name": "accuracy"}]},
        "max_steps": 2,
    }
    for key, value in over.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


def check(data: dict) -> TrainConfig:
    return validate_config(TrainConfig, data, "test")


def test_rl_derived_batch_values():
    cfg = check(rl_cfg())
    assert cfg.batch.sequences_per_step == 16
    assert cfg.batch.grad_accum_steps == math.ceil(16 / 3) == 6


def test_derived_values_follow_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = check(rl_cfg())
    assert cfg.sequences_per_device == 8
    assert cfg.batch.grad_accum_steps == 3


def test_prompts_must_split_over_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="does not split over 3 processes"):
        check(rl_cfg())


def test_grpo_needs_groups():
    with pytest.raises(ConfigError, match="completions_per_prompt to 2 or more"):
        check(rl_cfg(**{"batch.completions_per_prompt": 1}))
    assert check(rl_cfg(**{"batch.completions_per_prompt": 1, "rl.algorithm": "reinforce_pp"}))


def test_derived_fields_cannot_be_set_differently():
    with pytest.raises(ConfigError, match="grad_accum_steps is derived"):
        check(rl_cfg(**{"batch.grad_accum_steps": 2}))
    with pytest.raises(ConfigError, match="sequences_per_step is derived"):
        check(rl_cfg(**{"batch.sequences_per_step": 3}))


def test_algorithm_defaults_are_filled_in():
    grpo = check(rl_cfg()).rl
    assert (grpo.kl.mode, grpo.kl.coef, grpo.aggregation, grpo.preclip) == (
        "k3_loss",
        0.04,
        "seq_mean",
        False,
    )
    assert grpo.filter_sigma is None and grpo.reward_clip is None
    rpp = check(rl_cfg(**{"rl.algorithm": "reinforce_pp"})).rl
    assert (rpp.kl.mode, rpp.kl.coef, rpp.reward_clip, rpp.aggregation) == (
        "k1_reward",
        1e-3,
        10.0,
        "seq_mean",
    )
    assert rpp.filter_rule is None and rpp.filter_sigma is None
    sr = check(rl_cfg(**{"rl.algorithm": "stable_reinforce"})).rl
    assert sr.preclip is True and sr.filter_sigma == 3.0 and sr.filter_rule == "paper"
    rel = check(rl_cfg(**{"rl.algorithm": "stable_reinforce", "rl.filter_rule": "released"})).rl
    assert rel.filter_rule == "released"
    assert sr.preclip_bounds == pytest.approx((-6.907755, 6.907755))
    dr = check(rl_cfg(**{"rl.algorithm": "dr_grpo", "rl.clip_high": 0.28})).rl
    assert (dr.kl.mode, dr.kl.coef, dr.aggregation, dr.clip_low, dr.clip_high) == (
        "none",
        0.0,
        "constant",
        0.2,
        0.28,
    )


def test_explicit_knobs_win_and_kl_off_zeroes_the_coefficient():
    cfg = check(
        rl_cfg(**{"rl.kl": {"mode": "none", "coef": 0.5}, "rl.aggregation": "token_mean"})
    ).rl
    assert (cfg.kl.mode, cfg.kl.coef, cfg.aggregation) == ("none", 0.0, "token_mean")
    rpp = check(rl_cfg(**{"rl.algorithm": "reinforce_pp", "rl.reward_clip": None})).rl
    assert rpp.reward_clip is None


def test_mismatched_knobs_say_how_to_fix():
    with pytest.raises(ConfigError, match="filter_sigma applies to stable_reinforce only"):
        check(rl_cfg(**{"rl.filter_sigma": 2.0}))
    with pytest.raises(ConfigError, match="does not fit 'grpo'.*use none or k3_loss"):
        check(rl_cfg(**{"rl.kl": {"mode": "k1_reward"}}))
    with pytest.raises(ConfigError, match="filter_rule applies to stable_reinforce only"):
        check(rl_cfg(**{"rl.filter_rule": "released"}))
    with pytest.raises(ConfigError, match="filter_rule"):
        check(rl_cfg(**{"rl.algorithm": "stable_reinforce", "rl.filter_rule": "strict"}))
    with pytest.raises(ConfigError, match="ppo"):
        check(rl_cfg(**{"rl.algorithm": "ppo"}))
    with pytest.raises(ConfigError, match="needs rewards"):
        check({k: v for k, v in rl_cfg().items() if k != "rewards"})
    with pytest.raises(ConfigError, match="max_steps and/or epochs"):
        check({k: v for k, v in rl_cfg().items() if k != "max_steps"})


def test_sft_batch_units():
    base = {"stage": "sft", "data": {"path": "t.jsonl"}, "epochs": 1}
    cfg = check({**base, "batch": {"sequences_per_step": 8, "micro_batch_per_device": 2}})
    assert cfg.batch.grad_accum_steps == 4
    with pytest.raises(ConfigError, match="stage sft counts batch.sequences_per_step"):
        check({**base, "batch": {"prompts_per_step": 8}})
    with pytest.raises(ConfigError, match="needs batch.sequences_per_step"):
        check(base)
    with pytest.raises(ConfigError, match="belong to stage: rl"):
        check({**base, "batch": {"sequences_per_step": 8}, "rl": {"algorithm": "grpo"}})


def test_lora_keeps_vision_frozen():
    base = {
        "stage": "sft",
        "data": {"path": "t.jsonl"},
        "epochs": 1,
        "batch": {"sequences_per_step": 2},
    }
    with pytest.raises(ConfigError, match="include_vision"):
        check({**base, "weights": {"mode": "lora", "freeze_vision_tower": False}})
    cfg = check({**base, "weights": {"mode": "full", "freeze_vision_tower": False}})
    assert cfg.weights.freeze_vision_tower is False


def test_unknown_key_gets_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'rl.max_new_tokens'"):
        check(rl_cfg(**{"rl.max_new_token": 5}))


def test_reward_preset_expands_and_unknown_reward_is_an_error():
    cfg = check(rl_cfg(rewards={"preset": "msrl-text"}))
    assert [s.name for s in cfg.rewards.components] == ["accuracy", "format"]
    assert cfg.rewards.components[1].weight == 0.2 and cfg.rewards.combiner == "sum"
    with pytest.raises(ConfigError, match="neither built-in"):
        check(rl_cfg(rewards={"components": [{"name": "acuracy"}]}))


def test_saved_config_validates_again_unchanged():
    cfg = check(rl_cfg(**{"rl.algorithm": "stable_reinforce"}, rewards={"preset": "msrl-text"}))
    dumped = cfg.model_dump(mode="json")
    again = check(dumped)
    assert again.model_dump(mode="json") == dumped


def test_recipe_paths_are_relative_to_the_recipe(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "my-model").mkdir()
    recipe = folder / "x.yaml"
    recipe.write_text(
        "kind: train\nstage: sft\nmodel: {spec: ./my-model, init_from: ../prev/final}\n"
        "data: {path: data/t.jsonl, template: tpl/judge.jinja}\nbatch: {sequences_per_step: 2}\n"
        "epochs: 1\neval: {every_steps: 5, path: ev/val.jsonl}\n"
    )
    cfg = load_config(recipe, kind="train")
    assert cfg.data.path == str(folder / "data" / "t.jsonl")
    assert cfg.data.template == str(folder / "tpl" / "judge.jinja")
    assert cfg.model.spec == str(folder / "my-model")
    assert cfg.model.init_from == str(tmp_path / "prev" / "final")
    assert cfg.base_dir == str(folder)
    assert cfg.eval.path == str(folder / "ev" / "val.jsonl") and cfg.eval.split == "val"
    named = load_config(recipe, ["model.spec=tiny-llama"], kind="train")
    assert named.model.spec == "tiny-llama"


@pytest.mark.parametrize("name", ["sft", "grpo", "dr_grpo", "reinforce_pp", "stable_reinforce"])
def test_tiny_recipes_exist_and_validate(name):
    cfg = load_config(TINY / f"{name}.yaml", kind="train")
    assert Path(cfg.data.path).is_file()
    assert cfg.max_steps == 3
