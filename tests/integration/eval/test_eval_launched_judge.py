"""`rmkit eval` with a judge server rmkit launches (``judge.launch``) and stops afterwards."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from rmkit.cli.main import main
from rmkit.eval.predictions import read_predictions

REPO_EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "tiny"


def test_eval_through_a_launched_rmkit_judge(tmp_path, tiny_text_model):
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(
        "kind: eval\n"
        "benchmark: records\n"
        f"data: {REPO_EXAMPLES / 'prefs.jsonl'}\n"
        f"judge: {{model: {tiny_text_model}, launch: {{kind: rmkit, ready_timeout_s: 120}}}}\n"
        "sampling: {max_new_tokens: 4}\n"
        "limit: 4\n"
    )
    out = tmp_path / "out"
    assert main(["eval", "--recipe", str(recipe), "--output", str(out)]) == 0
    preds = read_predictions(out / "predictions.jsonl")
    assert len(preds) == 4 and all(isinstance(p["output"], str) for p in preds)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 4
    log = (out / "server.log").read_text()
    assert log.count('"POST /v1/chat/completions" 200') >= 4  # empty greedy answers retry once
    pid = int(re.search(r"=== rmkit: server pid (\d+)", log).group(1))
    assert "=== rmkit: server stopped" in log
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
