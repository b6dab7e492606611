"""Rollout-engine pieces without a server: config rules, the token-id answer format, the
server command lines, the prompt-id check."""

from __future__ import annotations

import pytest
from tests.unit.training.test_config import rl_cfg

from rmkit.config.validate import validate_config
from rmkit.errors import ConfigError, RmkitError
from rmkit.generation.launch import LaunchConfig, server_command
from rmkit.generation.token_server import parse_server_timing, parse_token_answer
from rmkit.training.config import TrainConfig


def check(data: dict) -> TrainConfig:
    return validate_config(TrainConfig, data, "test")


# ----------------------------------------------------------------------------- config


def test_engine_defaults_to_local_and_server_needs_a_server():
    cfg = check(rl_cfg())
    assert cfg.rl.rollout.engine == "local" and cfg.rl.rollout.server is None
    with pytest.raises(ConfigError, match="rl.rollout.engine: server needs rl.rollout.server"):
        check(rl_cfg(**{"rl.rollout": {"engine": "server"}}))
    with pytest.raises(ConfigError, match="base_url .* or rl.rollout.server.launch"):
        check(rl_cfg(**{"rl.rollout": {"engine": "server", "server": {}}}))
    with pytest.raises(ConfigError, match="rl.rollout.server.launch .* not both"):
        check(
            rl_cfg(
                **{
                    "rl.rollout": {
                        "engine": "server",
                        "server": {"base_url": "http://h/v1", "launch": {"kind": "rmkit"}},
                    }
                }
            )
        )
    ok = check(rl_cfg(**{"rl.rollout": {"engine": "server", "server": {"launch": {}}}}))
    assert ok.rl.rollout.server.launch.kind == "vllm" and ok.rl.rollout.sync_every == 1
    # the same backend config model as eval's judge and distill's teacher, RL's defaults
    from rmkit.generation.config import BackendConfig

    assert isinstance(ok.rl.rollout.server, BackendConfig)
    assert ok.rl.rollout.server.max_retries == 3 and ok.rl.rollout.server.api_model is None
    with pytest.raises(ConfigError, match="decoder, quantization describe a local model"):
        check(
            rl_cfg(
                **{
                    "rl.rollout": {
                        "engine": "server",
                        "server": {"launch": {}, "decoder": "generate", "quantization": "nf4"},
                    }
                }
            )
        )


def test_moved_rollout_keys_say_where_they_went():
    with pytest.raises(ConfigError, match=r"rl.rollout_dtype is now rl.rollout.dtype"):
        check(rl_cfg(**{"rl.rollout_dtype": "bfloat16"}))
    with pytest.raises(
        ConfigError, match=r"rl.merge_lora_for_rollout is now rl.rollout.merge_lora"
    ):
        check(rl_cfg(**{"rl.merge_lora_for_rollout": False}))


def test_unknown_launch_key_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match="ready_timeout_s"):
        check(
            rl_cfg(
                **{
                    "rl.rollout": {
                        "engine": "server",
                        "server": {"launch": {"ready_timeout": 5}},
                    }
                }
            )
        )


# ----------------------------------------------------------------------------- wire format


def _answer(n=2, lps=True, ids=True):
    choices = []
    for i in range(n):
        c = {
            "index": i,
            "message": {"role": "assistant", "content": f"text{i}"},
            "finish_reason": "length" if i else "stop",
        }
        if ids:
            c["token_ids"] = [10 + i, 11, 2]
        if lps:
            c["logprobs"] = {
                "content": [{"token": "token_id:1", "logprob": -0.5 * (k + 1)} for k in range(3)]
            }
        choices.append(c)
    return {"choices": list(reversed(choices)), "prompt_token_ids": [1, 5, 6]}


def test_parse_token_answer_reads_ids_logprobs_and_prompt():
    comps = parse_token_answer(_answer(), 2)
    assert [c.text for c in comps] == ["text0", "text1"]  # ordered by index
    assert comps[0].token_ids == [10, 11, 2] and comps[1].token_ids == [11, 11, 2]
    assert comps[0].token_logprobs == [-0.5, -1.0, -1.5]
    assert comps[0].mean_logprob == pytest.approx(-1.0)
    assert comps[0].prompt_token_ids == [1, 5, 6] and comps[0].n_tokens == 3
    assert [c.finish_reason for c in comps] == ["stop", "length"]


def test_parse_token_answer_refuses_answers_without_token_ids():
    with pytest.raises(RmkitError, match="no token_ids") as err:
        parse_token_answer(_answer(ids=False), 2, "http://x/v1")
    assert "return_token_ids" in err.value.hint
    bad = _answer()
    del bad["prompt_token_ids"]
    with pytest.raises(RmkitError, match="no prompt_token_ids"):
        parse_token_answer(bad, 2)
    with pytest.raises(RmkitError, match="0 log-probs for 3 tokens"):
        parse_token_answer(_answer(lps=False), 2)
    with pytest.raises(RmkitError, match="asked for 3 completion"):
        parse_token_answer(_answer(), 3)


def test_server_timing_header():
    assert parse_server_timing("gen;dur=250.5, queue;dur=10") == {"gen": 0.2505, "queue": 0.01}
    assert parse_server_timing(None) == {} and parse_server_timing("gen;dur=x") == {}


# ----------------------------------------------------------------------------- commands


def test_vllm_command_enables_runtime_lora_with_an_allowed_rank(tmp_path):
    py = tmp_path / "python"
    py.write_text("")
    cfg = LaunchConfig(kind="vllm", python=str(py), args=["--enforce-eager"], env={"A": "1"})
    argv, env = server_command(
        cfg, "/models/m", "m", 8123, dtype="float32", lora_rank=12, sync_root=None
    )
    assert argv[:3] == [str(py), "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(argv)
    assert "--model /models/m --served-model-name m" in joined
    assert "--port 8123 --dtype float32" in joined
    assert "--enable-lora --max-lora-rank 16 --max-loras 2" in joined  # 12 -> vLLM's 16
    assert argv[-1] == "--enforce-eager"
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and env["A"] == "1"


def test_full_weight_sync_turns_on_weight_reloading(tmp_path):
    py = tmp_path / "python"
    py.write_text("")
    argv, env = server_command(
        LaunchConfig(kind="vllm", python=str(py)), "/m", "m", 1, dtype="bfloat16",
        lora_rank=None, sync_root="/s", weight_reload=True,
    )  # fmt: skip
    assert env["VLLM_SERVER_DEV_MODE"] == "1" and "--enable-lora" not in argv
    argv, _ = server_command(
        LaunchConfig(kind="rmkit"), "/m", "m", 1, dtype="float32",
        lora_rank=None, sync_root="/s", weight_reload=True,
    )  # fmt: skip
    assert "--enable-weight-reload --weights-root /s" in " ".join(argv)
    assert "--enable-lora" not in argv


def test_rmkit_command_confines_adapters_to_the_adapter_folder():
    cfg = LaunchConfig(kind="rmkit", dtype="bfloat16")
    argv, _ = server_command(
        cfg, "/m", "tiny", 9000, dtype="float32", lora_rank=8, sync_root="/run/ad"
    )
    joined = " ".join(argv)
    assert "-m rmkit serve /m --served-model-name tiny" in joined
    assert "--dtype bfloat16" in joined  # the launch block's dtype wins
    assert "--enable-lora --lora-root /run/ad" in joined


def test_missing_vllm_python_is_a_clear_error(tmp_path, monkeypatch):
    from rmkit.generation.launch import vllm_python

    monkeypatch.setenv("RMKIT_VLLM_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(RmkitError, match=r"\$RMKIT_VLLM_PYTHON is .*nope/python, which does not"):
        vllm_python()
    with pytest.raises(RmkitError, match="launch.python is /x/py"):
        vllm_python("/x/py")


# ----------------------------------------------------------------------------- prompt ids


def test_prompt_id_mismatch_names_the_first_differing_position(loaded_text):
    from rmkit.models.chat import prepare_inputs
    from rmkit.training.engines import check_prompt_ids

    conv = [{"role": "user", "content": "Which answer is better?"}]
    mine = prepare_inputs(loaded_text, [conv])["input_ids"][0].tolist()
    check_prompt_ids(loaded_text, conv, mine, "http://s/v1")  # equal: no error
    other = list(mine)
    other[5] = (other[5] + 1) % 1000
    with pytest.raises(RmkitError, match=r"first difference at token 5 ") as err:
        check_prompt_ids(loaded_text, conv, other, "http://s/v1")
    assert "http://s/v1" in err.value.message and "chat template" in err.value.hint
    with pytest.raises(RmkitError, match=rf"first difference at token {len(mine)} "):
        check_prompt_ids(loaded_text, conv, mine + [7], "http://s/v1")


def test_served_names_addresses_and_logprobs_mode(tmp_path):
    from rmkit.generation.launch import address, served_name

    assert served_name("tiny-llama") == "tiny-llama"
    assert served_name("Qwen/Qwen2.5-VL-7B-Instruct") == "Qwen--Qwen2.5-VL-7B-Instruct"
    (tmp_path / "my-model").mkdir()
    assert served_name(str(tmp_path / "my-model")) == "my-model"
    port, url = address(LaunchConfig(kind="rmkit", host="0.0.0.0", port=8123))
    assert (port, url) == (8123, "http://127.0.0.1:8123/v1")
    assert address(LaunchConfig(kind="rmkit"))[0] > 0  # port 0: a free one
    argv, _ = server_command(
        LaunchConfig(kind="rmkit"), "/m", "m", 1, dtype="float32", lora_rank=8,
        sync_root=None, logprobs_mode="processed_logprobs",
    )  # fmt: skip
    assert " --logprobs-mode processed_logprobs" in " ".join(argv)
