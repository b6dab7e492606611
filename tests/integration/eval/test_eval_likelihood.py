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
    fast = score_conversations(loaded, convs, prefix, ["1", "2"])
    tok = loaded.tokenizer
    conts = [tok(prefix + a, add_special_tokens=False)["input_ids"] for a in ("1", "2")]
    for conv, got in zip(convs, fast, strict=True):
        want = continuation_logprobs(loaded, conv, conts)
        assert got == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"judge": {"base_url": "http://127.0.0.1:9/v1", "api_model": "m"}}, "local judge.model"),
        ({"judge": {"model": "tiny-llama"}, "votes": 3}, "votes must be 1"),
    ],
)
def test_likelihood_config_errors(extra, message, tmp_path):
    from rmkit.config.validate import validate_config
    from rmkit.eval.config import EvalConfig

    data = {"benchmark": "records", "data": str(PREFS), "output": str(tmp_path), **extra}
    data["method"] = "likelihood"
    with pytest.raises(ConfigError, match=message):
        validate_config(EvalConfig, data, "eval")
