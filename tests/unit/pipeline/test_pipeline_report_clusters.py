"""The report stage says which paired bootstrap it ran: over clusters when the items carry one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rmkit.cli.run import headline
from rmkit.data.records import make_record, write_records
from rmkit.eval import EvalConfig, run_eval
from rmkit.pipeline.report import ReportStageConfig, build_report


def _judge(force: str | None):
    """The eval tests' scripted judge (``tests.unit.eval.layouts``), importable from here too."""
    root = str(Path(__file__).resolve().parents[3])
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.unit.eval.layouts import ScriptedJudge

    return ScriptedJudge(force=force)


def _heldout(path, clusters: bool):
    recs = [
        make_record(
            id=f"h{q:02d}",
            source="quickstart",
            task="text",
            prompt=f"Q policy:{'right' if q // 5 < 2 else 'wrong'} q{q}",
            candidates=["GOOD a", "BAD b"],
            label=0,
            cluster=f"fact-{q // 5}" if clusters else None,
        )
        for q in range(20)  # 4 facts x 5 pairs
    ]
    write_records(path, recs)
    return path


@pytest.mark.parametrize("clusters", [True, False])
def test_report_names_the_bootstrap_and_counts_clusters(tmp_path, clusters):
    data = _heldout(tmp_path / "heldout.jsonl", clusters)
    for name, force in (("before", None), ("after", "right")):
        cfg = EvalConfig(
            benchmark="records", data=str(data), output=str(tmp_path / name), judge={"model": "s"}
        )
        run_eval(cfg, backend=_judge(force))
    cfg = ReportStageConfig(
        before=str(tmp_path / "before"),
        after=str(tmp_path / "after"),
        output=str(tmp_path / "report"),
        n_boot=500,
    )
    res = build_report(cfg)
    on_disk = json.loads((tmp_path / "report" / "results.json").read_text())
    assert on_disk == res
    assert res["n_heldout"] == 20 and res["difference"] == pytest.approx(0.5)
    assert res["ci95_low"] <= res["difference"] <= res["ci95_high"]
    report = (tmp_path / "report" / "report.md").read_text()
    if clusters:
        assert (res["bootstrap"], res["n_clusters"]) == ("cluster", 4)
        assert "20 held-out items in 4 clusters judged by both" in report
        assert "(paired cluster bootstrap over 4 clusters, 500 resamples)" in report
        assert headline(res).endswith("n=20 in 4 clusters): no clear change")
    else:
        assert (res["bootstrap"], res["n_clusters"]) == ("item", 20)
        assert "20 held-out items judged by both" in report
        assert "(paired item bootstrap, 500 resamples)" in report
        assert "cluster" not in report
        assert "n=20):" in headline(res)
