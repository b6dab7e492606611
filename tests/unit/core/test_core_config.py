"""Recipe loading, overrides and config validation messages."""

from __future__ import annotations

import pytest

from rmkit.config import apply_overrides, load_yaml, parse_override, validate_config
from rmkit.config.kinds import load_config
from rmkit.data.config import BuildDataConfig
from rmkit.errors import ConfigError


@pytest.mark.parametrize(
    "text,expected",
    [
        ("lr: 3e-4", 3e-4),
        ("lr: 1E5", 1e5),
        ("lr: -2.5e-6", -2.5e-6),
        ("lr: 0.1", 0.1),
        ("lr: 7", 7),
        ("lr: '3e-4'", "3e-4"),
    ],
)
def test_scientific_notation_is_a_number(text, expected):
    value = load_yaml(text)["lr"]
    assert value == expected and type(value) is type(expected)


def test_yaml_syntax_error_names_line():
    with pytest.raises(ConfigError, match=r"r.yaml:\d+: invalid YAML"):
        load_yaml("a: 1\nb: [1, 2\n", "r.yaml")


def test_overrides_set_nested_values_and_parse_types():
    data = {"optim": {"lr": 1.0}, "stages": [{"name": "a"}, {"name": "b"}]}
    out = apply_overrides(
        data,
        ["optim.lr=1e-5", "optim.betas=[0.9, 0.95]", "new.key=true", "stages.1.name=c", "x=null"],
    )
    assert out["optim"] == {"lr": 1e-5, "betas": [0.9, 0.95]}
    assert out["new"] == {"key": True}
    assert out["stages"][1]["name"] == "c"
    assert out["x"] is None
    assert data["optim"]["lr"] == 1.0  # the input is not modified


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1"])
def test_bad_override_syntax(bad):
    with pytest.raises(ConfigError):
        parse_override(bad)


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="'lr' is a value"):
        apply_overrides({"lr": 1.0}, ["lr.x=2"])


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError) as e:
        validate_config(
            BuildDataConfig,
            {"sources": [{"format": "pairs", "inputs": ["x"]}], "seeed": 3},
            "r.yaml",
        )
    assert "unknown key 'seeed'" in e.value.message and "did you mean 'seed'" in e.value.message
    assert e.value.hint == "rename 'seeed' to 'seed'"


def test_unknown_nested_key_names_its_path():
    with pytest.raises(ConfigError) as e:
        validate_config(
            BuildDataConfig,
            {"sources": [{"format": "pairs", "inputs": ["x"]}], "filters": {"max_promt_chars": 5}},
        )
    assert (
        "filters.max_promt_chars" in e.value.message
        and "filters.max_prompt_chars" in e.value.message
    )


def test_unknown_format_suggests_one():
    with pytest.raises(ConfigError, match="did you mean 'hh-rlhf'"):
        validate_config(BuildDataConfig, {"sources": [{"format": "hh_rlhf", "inputs": ["x"]}]})


def test_wrong_type_and_split_sum():
    with pytest.raises(ConfigError, match="'seed'"):
        validate_config(
            BuildDataConfig, {"sources": [{"format": "pairs", "inputs": ["x"]}], "seed": "abc"}
        )
    with pytest.raises(ConfigError, match="sum to 1"):
        validate_config(
            BuildDataConfig,
            {"sources": [{"format": "pairs", "inputs": ["x"]}], "splits": {"train": 0.5}},
        )


def test_load_config_kind_checks(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("kind: build-data\nsources:\n  - {format: pairs, inputs: [a.jsonl]}\nseed: 1e1\n")
    cfg = load_config(p, ["seed=4"], kind="build-data")
    assert cfg.seed == 4 and cfg.sources[0].format == "pairs"
    p.write_text("sources: []\n")
    with pytest.raises(ConfigError, match="missing 'kind'"):
        load_config(p)
    p.write_text("kind: bild-data\n")
    with pytest.raises(ConfigError, match="did you mean 'build-data'"):
        load_config(p)


def test_recipe_relative_inputs_resolve_against_recipe_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "r.yaml"
    p.write_text("kind: build-data\nsources:\n  - {format: pairs, inputs: [../data.jsonl]}\n")
    cfg = load_config(p)
    assert cfg.sources[0].inputs == [str((tmp_path / "data.jsonl").resolve())]


def test_loader_leaves_pyyaml_dumper_alone():
    import yaml

    load_yaml("lr: 3e-4")
    assert yaml.safe_dump({"a": 0.2}) == "a: 0.2\n"
    assert yaml.safe_load("x: 1e-3") == {"x": "1e-3"}  # plain PyYAML keeps its YAML 1.1 behaviour
