"""Stage-wise accounting in the report: untrained -> after SFT -> after RL on the same items."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from rmkit.data.records import make_record, write_records
from rmkit.eval import EvalConfig, paired_bootstrap_ci, paired_cluster_bootstrap_ci, run_eval
from rmkit.eval.compare import bootstrap_mean_ci, compare_stages, verdict_changes
from rmkit.pipeline.report import ReportStageConfig, build_report
from rmkit.pipeline.stages import REPORT_STAGE_KEYS, run_report

N = 30  # items h00..h29, 10 facts of 3 items each
# one letter per item: r = right, w = wrong (the other candidate), u = unparsable
BEFORE = "".join("r" if q % 3 == 0 else "w" for q in range(N))  # 10 of 30 right, 1 per fact
SFT = "r" * 27 + "wuu"  # 27 right
AFTER = "w" + "r" * 26 + "rwu"  # 27 right: q0 broken, q27 fixed, q28 u -> w (still wrong)


def _judge_class():
    root = str(Path(__file__).resolve().parents[3])
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.unit.eval.layouts import ScriptedJudge

    class PerItemJudge(ScriptedJudge):
        """The eval tests' scripted judge, told per item (its q<k> token) what to answer."""

        def __init__(self, letters: str):
            super().__init__()
            self.letters = letters

        def respond(self, conv):
            text = conv[-1]["content"]
            text = text if isinstance(text, str) else " ".join(p.get("text", "") for p in text)
            q = int(re.search(r"\bq(\d+)\b", text).group(1))
            self.force = {"r": "right", "w": "wrong", "u": "garbage"}[self.letters[q]]
            return super().respond(conv)

    return PerItemJudge


def _runs(tmp_path: Path, clusters: bool = True) -> dict[str, Path]:
    data = tmp_path / "heldout.jsonl"
    write_records(data, [
        make_record(id=f"h{q:02d}", source="quickstart", task="text", prompt=f"Q q{q}",
                    candidates=["GOOD a", "BAD b"], label=0,
                    cluster=f"fact-{q // 3}" if clusters else None)
        for q in range(N)
    ])  # fmt: skip
    judge = _judge_class()
    out = {}
    for name, letters in (("before", BEFORE), ("sft", SFT), ("after", AFTER)):
        out[name] = tmp_path / name
        cfg = EvalConfig(benchmark="records", data=str(data), output=str(out[name]),
                         judge={"model": f"judge-{name}"})  # fmt: skip
        run_eval(cfg, backend=judge(letters))
    return out


def _train_folder(path: Path, zero_var: list[float]) -> Path:
    path.mkdir(parents=True)
    rows = [
        {"step": i + 1, "loss": 0.1 * i, "reward/total": 1.0, "reward/accuracy": 0.5,
         "rl/zero_variance_groups": z, "step_time/rollout": 1.0}
        for i, z in enumerate(zero_var)
    ]  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_report_accounts_for_each_stage(tmp_path):
    runs = _runs(tmp_path)
    rl = _train_folder(tmp_path / "rl", [1.0, 0.5, 0.75])
    cfg = ReportStageConfig(
        before=str(runs["before"]), sft=str(runs["sft"]), after=str(runs["after"]),
        train=[str(rl)], output=str(tmp_path / "report"), n_boot=1000,
    )  # fmt: skip
    res = build_report(cfg)
    assert json.loads((tmp_path / "report" / "results.json").read_text()) == res
    # the two-run keys are unchanged
    assert res["accuracy_before"] == pytest.approx(10 / 30)
    assert res["accuracy_after"] == pytest.approx(27 / 30)
    assert res["difference"] == pytest.approx(17 / 30)
    assert (res["n_heldout"], res["n_clusters"], res["bootstrap"]) == (30, 10, "cluster")
    # stage by stage: the gains add up to the difference
    assert res["accuracy_sft"] == pytest.approx(27 / 30)
    assert res["sft_gain"] == pytest.approx(17 / 30) and res["rl_gain"] == 0.0
    assert res["sft_gain_ci95_low"] > 0 and res["sft_gain_significant"]
    assert res["rl_gain_ci95_low"] < 0 < res["rl_gain_ci95_high"]
    assert not res["rl_gain_significant"]
    assert res["verdicts_changed_sft_to_rl"] == pytest.approx(3 / 30)  # q0, q27, q28
    for name, acc in (("before", 10 / 30), ("sft", 27 / 30), ("after", 27 / 30)):
        assert res[f"accuracy_{name}_ci95_low"] <= acc <= res[f"accuracy_{name}_ci95_high"]
    # every fact has one right item of three before training: its cluster bootstrap cannot move
    assert (
        res["accuracy_before_ci95_low"] == res["accuracy_before_ci95_high"] == pytest.approx(1 / 3)
    )
    assert res["accuracy_sft_ci95_low"] < res["accuracy_sft_ci95_high"]
    st = res["stagewise"]
    assert (st["n_items"], st["n_clusters"], st["bootstrap"]) == (30, 10, "cluster")
    assert [r["stage"] for r in st["rows"]] == ["untrained", "after SFT", "after RL"]
    assert [r["judge"] for r in st["rows"]] == ["judge-before", "judge-sft", "judge-after"]
    # every fact has exactly one right item before training: resampling facts cannot move it
    before = st["rows"][0]
    assert before["ci95_low"] == pytest.approx(1 / 3) == before["ci95_high"]
    assert before["gain"] is None
    assert st["verdicts_sft_to_rl"] == {
        "n": 30, "changed": 3, "fraction": 0.1, "fixed": 1, "broken": 1,
    }  # fmt: skip
    # RL diagnostics from the RL stage's metrics.jsonl
    assert res["rl_zero_variance_groups"] == pytest.approx(0.75)
    assert res["train"]["rl"]["mean"]["rl/zero_variance_groups"] == pytest.approx(0.75)

    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Stage by stage" in md
    assert "30 held-out items in 10 clusters judged by all three" in md
    assert "| untrained | judge-before | 33.3% | [33.3%, 33.3%] | - | - | - |" in md
    sft_row = next(ln for ln in md.splitlines() if ln.startswith("| after SFT |"))
    assert "| +56.7 points |" in sft_row and sft_row.endswith("| yes: a gain |")
    rl_row = next(ln for ln in md.splitlines() if ln.startswith("| after RL |"))
    assert "| +0.0 points |" in rl_row and rl_row.endswith("| no |")
    assert "- SFT: +56.7 points" in md and "the interval excludes zero, a reliable gain." in md
    assert "- RL: +0.0 points" in md and "the interval includes zero, no reliable change." in md
    assert "RL changed the verdict on 3 of 30 items (10.0%): 1 now right, 1 now wrong." in md
    assert "| rl | 3 | rl/zero_variance_groups | 1 | 0.75 | 0.75 |" in md
    assert "on average 75.0% of a step's prompt groups had equal rewards" in md

    # the pipeline's summary gets the new keys next to the old ones
    metrics = run_report(SimpleNamespace(config=cfg), resume=False)
    assert set(REPORT_STAGE_KEYS) <= set(metrics)
    assert metrics["rl_gain"] == 0.0 and metrics["accuracy_before"] == res["accuracy_before"]


def test_without_sft_the_report_has_no_stage_rows(tmp_path):
    runs = _runs(tmp_path, clusters=False)
    cfg = ReportStageConfig(
        before=str(runs["before"]), after=str(runs["sft"]), output=str(tmp_path / "report"),
        n_boot=200,
    )  # fmt: skip
    res = build_report(cfg)
    assert not {"accuracy_sft", "rl_gain", "stagewise", "rl_zero_variance_groups"} & set(res)
    assert "Stage by stage" not in (tmp_path / "report" / "report.md").read_text()
    assert set(run_report(SimpleNamespace(config=cfg), resume=False)) == {
        "accuracy_before", "accuracy_after", "n_heldout", "difference", "ci95_low", "ci95_high",
        "significant", "n_clusters", "bootstrap",
    }  # fmt: skip


def test_item_bootstrap_stages_match_the_pairwise_functions(tmp_path):
    runs = _runs(tmp_path, clusters=False)
    st = compare_stages([runs["before"], runs["sft"], runs["after"]], n_boot=500, seed=3)
    assert (st["bootstrap"], st["n_clusters"]) == ("item", 30)
    score = {k: [float(c == "r") for c in v] for k, v in (("b", BEFORE), ("s", SFT), ("a", AFTER))}
    diff, low, high = paired_bootstrap_ci(score["b"], score["s"], 500, 3)
    assert st["gains"][0] == {"mean_diff": diff, "ci": [low, high]}
    assert tuple(st["gains"][1]["ci"]) == paired_bootstrap_ci(score["s"], score["a"], 500, 3)[1:]
    mean, low, high = bootstrap_mean_ci(score["s"], None, 500, 3)
    assert st["runs"][1]["accuracy"] == mean == pytest.approx(0.9)
    assert st["runs"][1]["ci"] == [low, high] and low < 0.9 < high


def test_bootstrap_mean_ci_draws_like_the_paired_bootstraps():
    x = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0]
    zeros = [0] * len(x)
    assert bootstrap_mean_ci(x, None, 700, 5) == paired_bootstrap_ci(zeros, x, 700, 5)
    clusters = [i // 4 for i in range(len(x))]
    assert bootstrap_mean_ci(x, clusters, 700, 5) == paired_cluster_bootstrap_ci(
        zeros, x, clusters, 700, 5
    )
    # one item per cluster: the cluster interval is the item interval
    assert bootstrap_mean_ci(x, list(range(len(x))), 700, 5) == bootstrap_mean_ci(x, None, 700, 5)
    # clustered data whose clusters differ widens the interval
    wide = bootstrap_mean_ci([1] * 6 + [0] * 6, [0] * 6 + [1] * 6, 2000, 0)
    narrow = bootstrap_mean_ci([1] * 6 + [0] * 6, None, 2000, 0)
    assert wide[2] - wide[1] > narrow[2] - narrow[1]


def test_verdict_changes_count_any_changed_pick():
    va = {"a": (0,), "b": (1,), "c": (None,), "d": (0, 1), "e": (0,)}
    vb = {"a": (0,), "b": (0,), "c": (1,), "d": (0, 0), "x": (0,)}
    sa = {"a": 1.0, "b": 0.0, "c": 0.0, "d": 0.5, "e": 1.0}
    sb = {"a": 1.0, "b": 1.0, "c": 0.0, "d": 1.0, "x": 1.0}
    assert verdict_changes(va, vb, sa, sb) == {
        "n": 4, "changed": 3, "fraction": 0.75, "fixed": 2, "broken": 0,
    }  # fmt: skip
    assert verdict_changes({}, {}, {}, {})["fraction"] is None


def test_transfer_rows_and_split_name(tmp_path):
    """A transfer set gets its own stage table and transfer_* keys; split_name adds n_<name>."""
    runs = _runs(tmp_path / "main")
    other = _runs(tmp_path / "transfer", clusters=False)
    cfg = ReportStageConfig(
        before=str(runs["before"]), sft=str(runs["sft"]), after=str(runs["after"]),
        transfer=[str(other[k]) for k in ("before", "sft", "after")], split_name="final",
        output=str(tmp_path / "report"), n_boot=500,
    )  # fmt: skip
    res = build_report(cfg)
    assert (res["n_final"], res["n_final_clusters"]) == (30, 10)
    assert res["transfer_accuracy_before"] == pytest.approx(10 / 30)
    assert res["transfer_accuracy_sft"] == pytest.approx(27 / 30)
    assert res["transfer_accuracy_after"] == pytest.approx(27 / 30)
    assert (
        res["transfer_sft_gain"] == pytest.approx(17 / 30) and res["transfer_sft_gain_significant"]
    )
    assert res["transfer_rl_gain"] == 0.0 and not res["transfer_rl_gain_significant"]
    assert (res["n_transfer"], res["n_transfer_clusters"]) == (30, 30)  # no clusters: items
    assert res["transfer"]["bootstrap"] == "item"
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Transfer" in md
    assert "30 items of a held-out set unlike the training data judged by all three" in md
    kept = run_report(SimpleNamespace(config=cfg), resume=False)
    assert kept["n_final"] == 30 and kept["transfer_accuracy_after"] == pytest.approx(27 / 30)
    assert "n_boot" not in kept and "transfer" not in kept
    with pytest.raises(ValueError, match="split_name"):
        ReportStageConfig(before="a", after="b", output="o", split_name="Final set")
