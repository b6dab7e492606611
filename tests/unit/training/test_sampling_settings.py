"""RL sampling settings: rl.top_k / rl.repetition_penalty / rl.policy_logprobs, the rollout's
SamplingParams, the run's start-up log, and log-probs under the sampler's distribution."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from rmkit.config.validate import validate_config
from rmkit.errors import ConfigError
from rmkit.training.config import TrainConfig
from rmkit.training.policy import SamplerLogprobs, logprob_settings, sampling_notes


def rl_cfg(**rl) -> TrainConfig:
    return validate_config(
        TrainConfig,
        {
            "stage": "rl",
            "data": {"path": "x.jsonl"},
            "batch": {"prompts_per_step": 2, "completions_per_prompt": 2},
            "rl": {"algorithm": "grpo", **rl},
            "rewards": {"components": [{"name": "accuracy"}]},
            "max_steps": 1,
        },
        "test",
    )


def test_rl_keys_defaults_validation_and_saved_config():
    rl = rl_cfg().rl
    assert (rl.top_k, rl.repetition_penalty, rl.policy_logprobs) == (0, 1.0, "temperature")
    for bad, key in [({"top_k": -1}, "rl.top_k"), ({"repetition_penalty": 0}, "rl.repetition_penalty"),
                     ({"policy_logprobs": "exact"}, "rl.policy_logprobs")]:  # fmt: skip
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            rl_cfg(**bad)
    dumped = rl_cfg(top_k=50, repetition_penalty=1.05).model_dump(mode="json")["rl"]
    assert (dumped["top_k"], dumped["repetition_penalty"], dumped["policy_logprobs"]) == (
        50,
        1.05,
        "temperature",
    )


def test_rollout_params_carry_them():
    from rmkit.prompts import get_template
    from rmkit.training.rollout import render_rollout

    cfg = rl_cfg(top_k=50, top_p=0.9, repetition_penalty=1.1)
    run = SimpleNamespace(cfg=cfg, template=get_template("default"), image_root=None, rank=0)
    record = {"id": "a", "task": "text", "prompt": "Q?", "candidates": ["x", "y"], "images": []}
    _, _, _, params = render_rollout(run, [record], 0, 0)
    assert (params.top_k, params.top_p, params.repetition_penalty) == (50, 0.9, 1.1)
    _, _, _, plain = render_rollout(
        SimpleNamespace(**{**vars(run), "cfg": rl_cfg()}), [record], 0, 0
    )
    assert (plain.top_k, plain.repetition_penalty) == (0, 1.0)


def test_logprob_settings():
    assert logprob_settings(rl_cfg(temperature=0.7, top_k=50).rl) == 0.7  # temperature mode
    assert logprob_settings(rl_cfg(temperature=0).rl) == 1.0
    # sampler mode with nothing beyond temperature: the same thing, as a float
    assert logprob_settings(rl_cfg(temperature=0.7, policy_logprobs="sampler").rl) == 0.7
    spec = logprob_settings(
        rl_cfg(temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.05,
               policy_logprobs="sampler").rl
    )  # fmt: skip
    assert spec == SamplerLogprobs(0.7, 50, 0.9, 1.05)
    # greedy rollouts: only the penalty shapes what generate picks from, at temperature 1
    greedy = rl_cfg(temperature=0, top_k=50, top_p=0.9, policy_logprobs="sampler").rl
    assert logprob_settings(greedy) == 1.0
    greedy_pen = rl_cfg(temperature=0, top_k=50, repetition_penalty=1.2, policy_logprobs="sampler")
    assert logprob_settings(greedy_pen.rl) == SamplerLogprobs(1.0, 0, 1.0, 1.2)


def test_start_of_run_log(caplog):
    from rmkit.training.engine import log_sampling

    notes = sampling_notes(rl_cfg(top_k=50, top_p=0.9).rl)
    assert notes == [
        (
            logging.INFO,
            "rollout sampling: temperature=1 top_p=0.9 top_k=50 repetition_penalty=1; "
            "loss log-probs: temperature",
        )
    ]
    levels = [lvl for lvl, _ in sampling_notes(rl_cfg(repetition_penalty=1.05).rl)]
    assert levels == [logging.INFO, logging.WARNING]
    exact = rl_cfg(repetition_penalty=1.05, policy_logprobs="sampler").rl
    assert [lvl for lvl, _ in sampling_notes(exact)] == [logging.INFO]
    with caplog.at_level(logging.INFO, logger="rmkit.training.engine"):
        log_sampling(rl_cfg(repetition_penalty=1.05), torch.nn.Linear(1, 1))
    text = caplog.text
    assert "repetition_penalty=1.05" in text and "differ from the sampler's" in text


@pytest.mark.parametrize("shared", [False, True])
def test_sampler_logprobs_equal_what_generation_sampled_from(loaded_text, shared):
    """rl.policy_logprobs: sampler reproduces the local backend's processed log-probs (penalty
    over prompt and completion, temperature, top-k, top-p); temperature mode does not."""
    from rmkit.generation.base import SamplingParams
    from rmkit.generation.hf import HFBackend
    from rmkit.training.policy import build_micro_batches, completion_logprobs

    rl = rl_cfg(
        temperature=0.8, top_k=6, top_p=0.9, repetition_penalty=1.4, policy_logprobs="sampler"
    ).rl
    convs = [
        [{"role": "user", "content": "Which answer is better? answer answer"}],
        [{"role": "user", "content": "Say a word."}],
    ]
    params = SamplingParams(
        n=2, temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k,
        repetition_penalty=rl.repetition_penalty, max_new_tokens=8, seed=4, logprobs=True,
    )  # fmt: skip
    backend = HFBackend(loaded_text, batch_size=4, logprobs_mode="processed_logprobs")
    samples = [s for row in backend.generate_detailed(convs, params) for s in row]
    seqs = [c for c in convs for _ in range(2)]
    groups = [0, 0, 1, 1] if shared else None
    (mb,) = build_micro_batches(loaded_text, seqs, [s.token_ids for s in samples], 4, "cpu", groups)
    loaded_text.model.eval()
    with torch.no_grad():
        exact = completion_logprobs(loaded_text.model, mb, logprob_settings(rl), shared)
        tempered = completion_logprobs(loaded_text.model, mb, rl.temperature, shared)
    for i, s in enumerate(samples):
        n = len(s.token_ids)
        assert exact[i, :n].tolist() == pytest.approx(s.token_logprobs, abs=1e-4)
    gap = max(
        abs(tempered[i, j].item() - s.token_logprobs[j])
        for i, s in enumerate(samples)
        for j in range(len(s.token_ids))
    )
    assert gap > 1e-2
