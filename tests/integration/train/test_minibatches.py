"""PPO mini-batches (``batch.prompts_per_update``): one rollout batch, several optimizer steps.

A step of 4 prompts x 4 completions splits into 2 mini-batches of 2 prompts. The first
optimizer step sees the rollout policy (ratio exactly 1); the second sees weights the first
step moved, so its ratio against the rollout-time log-probs differs from 1 and, with a large
learning rate, the PPO clip binds on exactly the tokens the clip rule names.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tests.integration.train.train_helpers import DENSE_REWARD, TINY, final_weights, train

RECIPE = TINY / "grpo.yaml"
COMMON = (
    DENSE_REWARD, "rl.kl.mode=none", "checkpoint.every_steps=null", "batch.prompts_per_step=4",
    "batch.completions_per_prompt=4", "batch.micro_batch_per_device=4", "rl.temperature=1.0",
)  # fmt: skip


def _calls(monkeypatch):
    """Record every policy_loss call of the RL loop: inputs and returned stats."""
    import rmkit.algorithms.losses as losses

    real, calls = losses.policy_loss, []

    def recording(logp, old, adv, mask, clip_low, clip_high, preclip=None):
        loss, st = real(logp, old, adv, mask, clip_low, clip_high, preclip)
        calls.append(
            {"logp": logp.detach().clone(), "old": old.detach().clone(), "adv": adv.clone(),
             "mask": mask.clone(), "clip": (clip_low, clip_high), "st": st, "loss": loss.detach()}
        )  # fmt: skip
        return loss, st

    monkeypatch.setattr(losses, "policy_loss", recording)
    return calls


def test_two_mini_batches_second_update_is_off_policy_and_clips(tmp_path, monkeypatch):
    from rmkit.config.kinds import load_config
    from rmkit.training.policy import completion_logprobs, micro_batch_parts
    from rmkit.training.rl import prepare_rl, rl_step

    cfg = load_config(
        RECIPE, [*COMMON, "batch.prompts_per_update=2", "optim.lr=0.05", "max_steps=1"],
        kind="train", base={"output": str(tmp_path / "run")},
    )  # fmt: skip
    assert cfg.mini_batches == 2 and cfg.batch.grad_accum_steps == 2
    run = prepare_rl(cfg)
    try:
        initial = copy.deepcopy(run.unwrapped)
        calls = _calls(monkeypatch)
        captured = {}
        real_parts = micro_batch_parts

        def keep_parts(run_, ro):
            captured["parts"] = real_parts(run_, ro)
            return captured["parts"]

        monkeypatch.setattr("rmkit.training.policy.micro_batch_parts", keep_parts)
        metrics, _ = rl_step(run)
    finally:
        run.reward_fn.close()
        run.engine.close()
    parts = captured["parts"]
    assert [len(p) for p in parts] == [2, 2]  # 8 sequences per mini-batch, 4 per micro-batch
    assert [c["logp"].shape[0] for c in calls] == [4, 4, 4, 4]
    # the old log-probs of every micro-batch are the rollout policy's (the initial weights)
    initial.eval()
    for mb, call in zip([mb for p in parts for mb in p], calls, strict=True):
        with torch.no_grad():
            expected = completion_logprobs(initial, mb, 1.0)
        m = mb.mask.bool()
        assert torch.allclose(call["old"][m], expected[m], atol=1e-5)
    # first optimizer step: on-policy, ratio exactly 1, nothing clipped
    for call in calls[:2]:
        m = call["mask"].bool()
        assert torch.equal(call["logp"][m], call["old"][m])
        assert float(call["st"]["clip_frac"]) == 0.0
    # second optimizer step: off-policy; the clipped term is used exactly where the rule says
    lo, hi = calls[2]["clip"]
    clipped_tokens = 0
    for call in calls[2:]:
        m = call["mask"].bool()
        ratio = torch.exp(call["logp"] - call["old"])
        assert float((ratio[m] - 1).abs().max()) > 1e-3
        adv = call["adv"].expand_as(ratio) if call["adv"].dim() == 2 else call["adv"][:, None]
        adv = adv.expand_as(ratio)
        uses_clip = ((adv > 0) & (ratio > 1 + hi)) | ((adv < 0) & (ratio < 1 - lo))
        assert float(call["st"]["clip_frac"]) == pytest.approx(
            float(uses_clip[m].float().mean()), abs=1e-7
        )
        expected_loss = -torch.where(uses_clip, ratio.clamp(1 - lo, 1 + hi) * adv, ratio * adv)
        assert torch.allclose(call["loss"][m], expected_loss[m], atol=1e-6)
        clipped_tokens += int(uses_clip[m].sum())
    assert clipped_tokens > 0  # the clip binds in the second update
    assert metrics["policy/update1/ratio_max"] == 1.0
    assert metrics["policy/update2/ratio_max"] > 1.0 + hi or metrics["policy/update2/clip_frac"] > 0
    assert metrics["policy/update2/clip_frac"] > 0 and metrics["policy/update1/clip_frac"] == 0


def test_one_mini_batch_equals_the_default_step(tmp_path):
    """``prompts_per_update == prompts_per_step`` is the plain loop, to the last bit."""
    a = train(RECIPE, tmp_path / "a", *COMMON, "max_steps=2")
    b = train(RECIPE, tmp_path / "b", *COMMON, "max_steps=2", "batch.prompts_per_update=4")
    wa, wb = final_weights(a / "final"), final_weights(b / "final")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_mini_batch_config_rules():
    from tests.unit.training.test_config import rl_cfg

    from rmkit.config.validate import validate_config
    from rmkit.errors import ConfigError
    from rmkit.training.config import TrainConfig

    cfg = validate_config(
        TrainConfig, rl_cfg(**{"batch.prompts_per_update": 2, "rl.updates_per_batch": 2}), "t"
    )
    assert cfg.mini_batches == 2 and cfg.optimizer_steps_per_step == 4
    assert cfg.batch.grad_accum_steps == 3  # 2 prompts x 4 completions per update, micro 3
    with pytest.raises(ConfigError, match="prompts_per_update 3 must divide"):
        validate_config(TrainConfig, rl_cfg(**{"batch.prompts_per_update": 3}), "t")
