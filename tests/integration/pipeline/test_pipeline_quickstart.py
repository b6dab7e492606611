"""recipes/quickstart.yaml end to end on the tiny random model (the wiring `make demo` runs).

The real demo runs the same recipe on SmolLM2-135M; here every stage runs for a couple of
steps on `tiny-llama`, so the test shows that the stages hand their outputs on and that the
report and `summary.json` carry the numbers of the two evaluations (a random model learns
nothing, so no gain is asserted).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rmkit.config.kinds import load_config
from rmkit.pipeline.runner import run_pipeline

REPO = Path(__file__).resolve().parents[3]
PNG = b"\x89PNG\r\n\x1a\n"


def test_quickstart_recipe_runs_on_the_tiny_model(tiny_text_model, tmp_path):
    overrides = [
        "vars.model=tiny-llama",
        "vars.eval_limit=12",
        "vars.think_tokens=8",
        "stages.sft.max_steps=2",
        "stages.sft.checkpoint.every_steps=1",
        "stages.rl.max_steps=2",
        "stages.rl.batch.prompts_per_step=2",
        "stages.rl.batch.completions_per_prompt=2",
        "stages.rl.batch.micro_batch_per_device=4",
    ]
    cfg = load_config(REPO / "recipes" / "quickstart.yaml", kind="pipeline", overrides=overrides)
    run = tmp_path / "qs"
    summary = run_pipeline(cfg, run)
    assert summary["complete"] is True
    before = json.loads((run / "eval-before" / "metrics.json").read_text())
    after = json.loads((run / "eval-after" / "metrics.json").read_text())
    # the report's headline numbers are the two evaluations' accuracies, on top of summary.json
    on_disk = json.loads((run / "summary.json").read_text())
    for s in (summary, on_disk):
        assert s["accuracy_before"] == before["overall"]
        assert s["accuracy_after"] == after["overall"]
        assert s["n_heldout"] == 12 == before["n"] == after["n"]
        assert s["ci95_low"] <= s["difference"] <= s["ci95_high"]
        assert s["difference"] == pytest.approx(after["overall"] - before["overall"], abs=1e-12)
    assert after["model"].endswith("tiny-llama") or "tiny-llama" in after["model"]
    report = (run / "report.md").read_text()
    assert "| difference |" in report and "95% CI" in report
    for name in ("accuracy.png", "curves-sft.png", "curves-rl.png"):
        assert (run / name).read_bytes()[:8] == PNG
        assert f"]({name})" in report
    results = json.loads((run / "report" / "results.json").read_text())
    assert results["train"]["sft"]["steps"] == 2 and results["train"]["rl"]["steps"] == 2
    assert "reward/total" in results["train"]["rl"]["last"]
    # stage by stage on the final split, and the transfer row
    sft = json.loads((run / "eval-sft" / "metrics.json").read_text())
    assert results["accuracy_sft"] == sft["overall"]
    assert results["n_final"] == 12 and results["n_final_clusters"] == 12  # one pair per fact
    assert results["sft_gain"] + results["rl_gain"] == pytest.approx(results["difference"])
    for key in ("sft_gain_ci95_low", "rl_gain_ci95_high", "verdicts_changed_sft_to_rl"):
        assert key in on_disk
    assert on_disk["n_transfer"] == 12 and on_disk["n_transfer_clusters"] == 6  # 2 per fact
    assert "## Stage by stage" in report and "## Transfer" in report
    data = json.loads((run / "eval-before" / "config.json").read_text())["data"]
    assert "data-eval" in data  # built from examples/quickstart/final.jsonl
