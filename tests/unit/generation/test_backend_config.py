"""BackendConfig: the one backend section (rules, names, build) and the callers that share it."""

from __future__ import annotations

import pytest

from rmkit.config import validate_config
from rmkit.distill.config import DistillConfig
from rmkit.errors import ConfigError, RmkitError
from rmkit.eval.config import EvalConfig, JudgeConfig
from rmkit.generation.config import API_KEYS, LOCAL_KEYS, BackendConfig
from rmkit.pipeline.data_stages import CaptionStageConfig
from rmkit.rewards.compose import RewardSpec, judge_options

API = {"base_url": "http://127.0.0.1:9/v1", "api_model": "judge-7b"}
# Every key set away from its default, for each kind.
LOCAL_ALL = {
    "model": "tiny-llama", "adapter": "/a/lora", "dtype": "bfloat16", "quantization": "nf4",
    "batch_size": 3, "device": "cpu", "decoder": "generate",
}  # fmt: skip
API_ALL = {
    **API, "api_key_env": "MY_KEY", "concurrency": 5, "max_retries": 2, "timeout": 9.5,
    "backoff_base": 0.25, "max_tokens_field": "max_completion_tokens", "explicit_sampling": True,
}  # fmt: skip


def err(data, model=BackendConfig, source="config") -> str:
    with pytest.raises(ConfigError) as e:
        validate_config(model, data, source)
    return e.value.message


class Required(BackendConfig):
    backend_required = True


def test_rules_and_their_messages_name_the_keys():
    assert err({"model": "m", **API}) == (
        "config: give either model (local) or base_url (API), not both"
    )
    assert err({"base_url": "http://h/v1"}) == (
        "config: base_url needs api_model (the model name the server serves)"
    )
    assert err({"adapter": "a"}) == "config: adapter needs model (the base model it applies to)"
    assert err({}, Required) == (
        "config: give model (a local model) or base_url + api_model (an API)"
    )
    # An optional section may be empty ("none yet"); the caller checks later.
    empty = BackendConfig()
    assert not empty.configured and not empty.is_api and empty.name == "<none>"
    assert err({"concurrency": 0}).startswith("config: 'concurrency': Input should be greater")
    assert "'decoder'" in err({"model": "m", "decoder": "fast"})


def test_messages_name_the_dotted_path_of_each_section():
    base = {"benchmark": "records", "data": "d", "output": "o"}
    assert err({**base, "judge": {"base_url": "u"}}, EvalConfig) == (
        "config: judge.base_url needs judge.api_model (the model name the server serves)"
    )
    assert "no judge" in err(base, EvalConfig)
    dist = {"input": "i", "output": "o"}
    assert "give either teacher.model (local) or teacher.base_url (API)" in err(
        {**dist, "teacher": {"model": "m", **API}}, DistillConfig
    )
    assert "no teacher" in err(dist, DistillConfig)
    cons = {**dist, "teacher": API, "filters": {"consistency": {"judge": {"adapter": "a"}}}}
    assert err(cons, DistillConfig) == (
        "config: filters.consistency.judge.adapter needs filters.consistency.judge.model "
        "(the base model it applies to)"
    )
    cons["filters"]["consistency"]["judge"] = {}
    assert "filters.consistency.judge needs model" in err(cons, DistillConfig)
    # The caption stage's keys are flat (top level), and it always needs a captioner.
    stage = {"dataset": "d", "output": "o"}
    assert err(stage, CaptionStageConfig, "stage 'cap' (caption)") == (
        "stage 'cap' (caption): give model (a local model) or base_url + api_model (an API)"
    )
    assert "base_url needs api_model" in err({**stage, "base_url": "u"}, CaptionStageConfig)


def test_unknown_keys_are_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown key 'modle'; did you mean 'model'") as e:
        validate_config(BackendConfig, {"modle": "m"})
    assert e.value.hint == "rename 'modle' to 'model'"
    with pytest.raises(ConfigError, match="unknown key 'judge.concurency'; did you mean"):
        validate_config(
            EvalConfig,
            {"benchmark": "records", "data": "d", "output": "o", "judge": {"concurency": 2}},
        )
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['modle'\]; did you mean 'model'"):
        judge_options({"modle": "m"})
    with pytest.raises(ConfigError, match="options.base_url needs options.api_model"):
        judge_options({"base_url": "u"})
    with pytest.raises(ConfigError, match="needs a judge"):
        judge_options({"variant": "signed"})
    # Checked when the recipe is validated, before any model loads.
    with pytest.raises(ConfigError, match=r"'options'.*unknown option\(s\) \['judge_url'\]"):
        validate_config(RewardSpec, {"name": "consistency", "options": {"judge_url": "u"}})


def test_name_and_kind():
    api = BackendConfig(**API_ALL)
    assert api.is_api and api.configured and api.name == "judge-7b"  # no URL, no key
    local = BackendConfig(model="m", adapter="out/final")
    assert not local.is_api and local.name == "m+out/final"
    caption = CaptionStageConfig(dataset="d", output="o", **API)
    assert caption.model_id == "api:judge-7b"
    assert CaptionStageConfig(dataset="d", output="o", model="m").model_id == "local:m"


def test_backend_kwargs_are_exactly_the_fields_of_the_kind():
    assert BackendConfig(**LOCAL_ALL).backend_kwargs() == LOCAL_ALL
    assert BackendConfig(**API_ALL).backend_kwargs() == API_ALL
    assert set(LOCAL_KEYS) | set(API_KEYS) | {"launch"} == set(BackendConfig.model_fields)


def test_build_local_gives_an_hf_backend(tiny_text_model):
    from rmkit.generation import SamplingParams
    from rmkit.generation.hf import HFBackend

    cfg = BackendConfig(model=str(tiny_text_model), batch_size=3, device="cpu", decoder="generate")
    # API-only extras do not apply to a local model and are dropped.
    backend = cfg.build(cache_dir="/nonexistent/cache", on_error="skip")
    try:
        assert isinstance(backend, HFBackend)
        assert backend.batch_size == 3 and backend.decoder == "generate"
        assert next(backend.model.parameters()).device.type == "cpu"
        out = backend.generate(
            [[{"role": "user", "content": "hi"}]], SamplingParams(max_new_tokens=2)
        )
        assert len(out) == 1 and out[0][0].n_tokens <= 2
    finally:
        backend.close()
    with pytest.raises(RmkitError, match="unknown option"):
        cfg.build(cache_dri="x")


def test_build_api_gives_an_openai_backend_with_the_settings(tmp_path):
    from rmkit.generation.openai_api import OpenAIBackend

    backend = BackendConfig(**API_ALL).build(
        cache_dir=tmp_path / "cache",
        on_error="skip",
        trust_remote_code=True,  # local-only: dropped
    )
    try:
        assert isinstance(backend, OpenAIBackend)
        got = {k: getattr(backend, k) for k in ("base_url", "model", "api_key_env", "concurrency")}
        assert got == {
            "base_url": "http://127.0.0.1:9/v1",
            "model": "judge-7b",
            "api_key_env": "MY_KEY",
            "concurrency": 5,
        }
        assert (backend.max_retries, backend.timeout, backend.backoff_base) == (2, 9.5, 0.25)
        assert backend.max_tokens_field == "max_completion_tokens"
        assert backend.on_error == "skip" and backend.cache is not None
    finally:
        backend.close()


@pytest.mark.parametrize("keys", [LOCAL_ALL, API_ALL], ids=["local", "api"])
def test_the_four_callers_accept_the_same_keys(keys):
    eval_cfg = validate_config(
        EvalConfig, {"benchmark": "records", "data": "d", "output": "o", "judge": keys}
    )
    distill_cfg = validate_config(
        DistillConfig,
        {"input": "i", "output": "o", "teacher": keys, "filters": {"consistency": {"judge": keys}}},
    )
    caption_cfg = validate_config(CaptionStageConfig, {"dataset": "d", "output": "o", **keys})
    reward_judge, _, own = judge_options({**keys, "variant": "signed"})
    sections = [
        eval_cfg.judge,
        distill_cfg.teacher,
        distill_cfg.filters.consistency.judge,
        caption_cfg,
        reward_judge,
    ]
    assert all(isinstance(s, BackendConfig) for s in sections)
    assert [s.backend_kwargs() for s in sections] == [keys] * len(sections)
    assert own == {"variant": "signed"}


def test_sections_differ_only_in_defaults():
    assert set(JudgeConfig.model_fields) == set(BackendConfig.model_fields)
    assert (JudgeConfig().batch_size, BackendConfig().batch_size) == (8, 16)
    assert CaptionStageConfig(dataset="d", output="o", model="m").batch_size == 8
    for name, field in BackendConfig.model_fields.items():
        if name != "batch_size":
            assert JudgeConfig.model_fields[name].default == field.default, name


def test_cli_backend_options_are_backend_fields():
    from rmkit.cli.common import API_FIELDS, LOCAL_FIELDS

    assert set(LOCAL_FIELDS) <= set(LOCAL_KEYS) and set(API_FIELDS) <= set(API_KEYS)
