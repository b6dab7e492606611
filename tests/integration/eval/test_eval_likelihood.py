"""``method: likelihood``: verdicts read off the answer probabilities of a local judge."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rmkit.cli.main import main
from rmkit.errors import ConfigError
from rmkit.eval.predictions import read_predictions

REPO = Path(__file__).resolve().parents[3]
PREFS = REPO / "examples" / "tiny" / "prefs.jsonl"


def test_likelihood_eval_through_the_cli(tiny_text_model, tmp_path):
    out = tmp_path / "lk"
    argv = [
        "eval", "--benchmark", "records", "--data", str(PREFS), "--output", str(out),
        "--model", str(tiny_text_model), "--limit", "6", "--orders", "both",
        "--set", "method=likelihood",
    ]  # fmt: skip
    assert main(argv) == 0
    preds = read_predictions(out / "predictions.jsonl")
    assert len(preds) == 12  # 6 items x both orders, one forced verdict each
    for p in preds:
        probs, logps = p["probabilities"], p["logprobs"]
        assert math.isclose(sum(probs), 1.0, rel_tol=1e-9)
        best = max(range(2), key=lambda k: logps[k])
        # the verdict is the more probable shown position, written as the forced completion
        assert p["shown_choice"] == best and p["pick"] == p["order"][best]
        assert p["output"] == f"<think></think><answer>{best + 1}</answer>"
        assert p["finish_reason"] == "forced"
        # softmax of the log-scores
        assert math.isclose(probs[0], 1 / (1 + math.exp(logps[1] - logps[0])), rel_tol=1e-9)
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 6 and m["n_samples"] == 12 and m["parse_failure_rate"] == 0.0


def test_fast_path_equals_the_per_item_continuation_scores(tiny_text_model):
    """One left-padded forward (last-position logits) gives the same answer log-probabilities
    as scoring each answer continuation separately (rmkit.serve.score)."""
    from rmkit.eval.likelihood import score_conversations
    from rmkit.models.loading import load_model
    from rmkit.prompts import get_template, render_judge_messages
    from rmkit.serve.score import answer_prefix, continuation_logprobs

    loaded = load_model(str(tiny_text_model))
    tpl = get_template("default")
    recs = [json.loads(line) for line in PREFS.read_text().splitlines()[:3]]
    # prompts of different lengths, so the batch is left-padded
    convs = [render_judge_messages(r, [1, 0], tpl) for r in recs]
    prefix = answer_prefix(tpl, "text", None)
    fast = score_conversations(loaded, convs, [prefix] * len(convs), ["1", "2"])
    tok = loaded.tokenizer
    conts = [tok(prefix + a, add_special_tokens=False)["input_ids"] for a in ("1", "2")]
    for conv, got in zip(convs, fast, strict=True):
        want = continuation_logprobs(loaded, conv, conts)
        assert got == pytest.approx(want, abs=1e-4)
    # each row after its own forced reasoning, of different lengths: the batch is re-padded
    prefixes = [answer_prefix(tpl, "text", t) for t in ("a", "the first one is better", "")]
    mixed = score_conversations(loaded, convs, prefixes, ["1", "2"])
    for conv, prefix, got in zip(convs, prefixes, mixed, strict=True):
        conts = [tok(prefix + a, add_special_tokens=False)["input_ids"] for a in ("1", "2")]
        assert got == pytest.approx(continuation_logprobs(loaded, conv, conts), abs=1e-4)


def test_greedy_reasoning_then_scored_answers(tiny_text_model, tmp_path):
    """``reasoning: greedy``: the judge writes its think block greedily, the answers are scored
    after it; each row's scores equal scoring that row alone after its own forced prefix."""
    from rmkit.generation.base import SamplingParams
    from rmkit.generation.hf import HFBackend
    from rmkit.models.loading import load_model
    from rmkit.serve.score import continuation_logprobs

    out = tmp_path / "lk"
    argv = [
        "eval", "--benchmark", "records", "--data", str(PREFS), "--output", str(out),
        "--model", str(tiny_text_model), "--limit", "4", "--orders", "both",
        "--max-new-tokens", "12", "--set", "method=likelihood", "--set", "reasoning=greedy",
    ]  # fmt: skip
    assert main(argv) == 0
    preds = read_predictions(out / "predictions.jsonl")
    assert len(preds) == 8
    loaded = load_model(str(tiny_text_model))
    convs = [p["prompt"] for p in preds]
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=12, stop=("</think>", "<answer>"))
    greedy = [row[0].text.strip() for row in HFBackend(loaded).generate(convs, params)]
    for p, conv, thought in zip(preds, convs, greedy, strict=True):
        prefix = ("" if thought.startswith("<think>") else "<think>") + thought
        prefix += "</think><answer>"
        best = p["shown_choice"]
        assert p["output"] == f"{prefix}{best + 1}</answer>"
        tok = loaded.tokenizer
        conts = [tok(prefix + a, add_special_tokens=False)["input_ids"] for a in ("1", "2")]
        assert p["logprobs"] == pytest.approx(continuation_logprobs(loaded, conv, conts), abs=1e-4)
        assert p["n_tokens"] >= 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"judge": {"model": "tiny-llama"}, "method": "generate", "reasoning": "greedy"},
            "likelihood' only",
        ),
        ({"judge": {"base_url": "http://127.0.0.1:9/v1", "api_model": "m"}}, "local judge.model"),
        ({"judge": {"model": "tiny-llama"}, "votes": 3}, "votes must be 1"),
    ],
)
def test_likelihood_config_errors(extra, message, tmp_path):
    from rmkit.config.validate import validate_config
    from rmkit.eval.config import EvalConfig

    data = {"benchmark": "records", "data": str(PREFS), "output": str(tmp_path)}
    data = {"method": "likelihood", **data, **extra}
    with pytest.raises(ConfigError, match=message):
        validate_config(EvalConfig, data, "eval")
