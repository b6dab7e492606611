"""The paired cluster bootstrap, and records' ``cluster`` reaching ``rmkit eval compare``."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from tests.unit.eval.layouts import ScriptedJudge

from rmkit.cli.main import main
from rmkit.data.build import build_data
from rmkit.data.config import BuildDataConfig
from rmkit.data.records import load_records, make_record, record_problem, write_records
from rmkit.errors import DataError, RmkitError
from rmkit.eval import EvalConfig, compare_runs, paired_bootstrap_ci, paired_cluster_bootstrap_ci
from rmkit.eval.compare import ci_line
from rmkit.eval.predictions import read_predictions

# -- the statistic ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "n_boot", "seed"),
    [(1, 100, 0), (7, 333, 1), (200, 2000, 5), (3001, 1500, 2)],  # the last crosses blocks
)
def test_one_item_per_cluster_is_the_item_bootstrap_exactly(n, n_boot, seed):
    rng = random.Random(n)
    a = [float(rng.random() < 0.5) for _ in range(n)]
    b = [rng.random() for _ in range(n)]
    item = paired_bootstrap_ci(a, b, n_boot, seed)
    labels = [f"fact-{i}" for i in range(n)]  # any labels, one per item, in item order
    assert paired_cluster_bootstrap_ci(a, b, labels, n_boot, seed) == item
    assert paired_cluster_bootstrap_ci(a, b, list(range(n)), n_boot, seed) == item


def test_identical_items_within_clusters_widen_the_interval():
    # 20 clusters of 10 identical items: the data hold 20 independent units, not 200, so the
    # honest interval is about sqrt(200 / 20) = sqrt(10) ~ 3.2 times the item bootstrap's.
    rng = random.Random(0)
    a, b, clusters = [], [], []
    for c in range(20):
        before, after = float(rng.random() < 0.5), float(rng.random() < 0.7)
        a += [before] * 10
        b += [after] * 10
        clusters += [c] * 10
    mean_i, lo_i, hi_i = paired_bootstrap_ci(a, b, n_boot=4000, seed=0)
    mean_c, lo_c, hi_c = paired_cluster_bootstrap_ci(a, b, clusters, n_boot=4000, seed=0)
    assert mean_c == mean_i
    assert lo_c <= mean_c <= hi_c
    ratio = (hi_c - lo_c) / (hi_i - lo_i)
    assert ratio >= 2.0, ratio
    assert 2.5 < ratio < 4.0, ratio  # around sqrt(10)


def test_tiny_case_by_hand():
    # d = b - a = [1, 0, 1, 1]; cluster x = {item 0}: sum 1, size 1; y = {1, 2, 3}: sum 2, size 3.
    # default_rng(1).integers(0, 2, size=(4, 2)) draws [x, y], [y, y], [x, x], [y, y]: resample
    # means (1+2)/(1+3) = 3/4, 4/6, 2/2, 4/6; sorted 2/3, 2/3, 3/4, 1. Linear percentiles:
    # 2.5% at position 0.075 -> 2/3; 97.5% at 2.925 -> 3/4 + 0.925 * (1 - 3/4) = 0.98125.
    a, b, clusters = [0, 0, 0, 0], [1, 0, 1, 1], ["x", "y", "y", "y"]
    mean, low, high = paired_cluster_bootstrap_ci(a, b, clusters, n_boot=4, seed=1)
    assert mean == 0.75
    assert low == pytest.approx(2 / 3) and high == pytest.approx(0.98125)
    # the same by direct numpy re-computation
    d = np.array(b, float) - np.array(a, float)
    sums, sizes = np.array([d[0], d[1:].sum()]), np.array([1.0, 3.0])
    idx = np.random.default_rng(1).integers(0, 2, size=(4, 2))
    assert idx.tolist() == [[0, 1], [1, 1], [0, 0], [1, 1]]
    means = sums[idx].sum(axis=1) / sizes[idx].sum(axis=1)
    assert (low, high) == tuple(np.quantile(means, [0.025, 0.975]))


def test_the_statistic_is_the_ratio_over_whole_clusters():
    # interleaved items of the same clusters: the same cluster sums and sizes, the same answer
    a = [0, 1, 0, 0, 1, 0]
    b = [1, 1, 0, 1, 0, 1]
    grouped = paired_cluster_bootstrap_ci(a, b, ["p", "p", "p", "q", "q", "r"], 500, 3)
    order = [0, 3, 1, 5, 2, 4]  # p, q, p, r, p, q: first appearances still p, q, r
    mixed = paired_cluster_bootstrap_ci(
        [a[i] for i in order],
        [b[i] for i in order],
        [["p", "p", "p", "q", "q", "r"][i] for i in order],
        500,
        3,
    )
    assert mixed == grouped
    # an all-same difference has a zero-width interval
    assert paired_cluster_bootstrap_ci([0] * 4, [1] * 4, [1, 1, 2, 2]) == (1.0, 1.0, 1.0)


def test_bad_cluster_inputs_are_refused():
    with pytest.raises(RmkitError, match="3 cluster labels for 2 items"):
        paired_cluster_bootstrap_ci([0, 1], [1, 1], ["a", "b", "c"])
    with pytest.raises(RmkitError, match="not hashable"):
        paired_cluster_bootstrap_ci([0, 1], [1, 1], [["a"], ["b"]])
    with pytest.raises(RmkitError, match="non-empty"):
        paired_cluster_bootstrap_ci([], [], [])


# -- the records field -----------------------------------------------------------------------


def _rec(**kw):
    base = dict(id="r", source="s", task="text", prompt="Q", candidates=["a", "b"], label=0)
    return make_record(**{**base, **kw})


@pytest.mark.parametrize("value", ["fact:capital/Japan", 7, 2.5, True])
def test_records_accept_a_scalar_cluster(value):
    rec = _rec(cluster=value)
    assert rec["cluster"] == value and record_problem(rec) is None
    assert list(rec) == [
        "id",
        "source",
        "task",
        "prompt",
        "images",
        "candidates",
        "label",
        "label_kind",
        "cluster",
        "meta",
    ]
    assert "cluster" not in _rec()  # absent unless given


@pytest.mark.parametrize(
    ("value", "got"), [(["a"], "got a list"), ({"k": 1}, "got an object"), ("  ", "empty string")]
)
def test_a_non_scalar_cluster_is_an_error_naming_file_line_and_field(tmp_path, value, got):
    rec = _rec(cluster=value)
    field, expected = record_problem(rec)
    assert field == "cluster" and got in expected
    path = tmp_path / "recs.jsonl"
    write_records(path, [_rec(id="ok", cluster="c1"), rec])
    with pytest.raises(DataError) as err:
        load_records(path)
    text = str(err.value)
    assert "recs.jsonl" in text and "2" in text and "cluster" in text and "string, number" in text


def test_build_data_pairs_carry_a_cluster_column(tmp_path):
    rows = [
        {"id": "p1", "prompt": "Q1", "chosen": "yes", "rejected": "no", "cluster": "f1"},
        {"id": "p2", "prompt": "Q2", "chosen": "yes", "rejected": "no", "question": "f1"},
        {"id": "p3", "prompt": "Q3", "chosen": "yes", "rejected": "no"},
    ]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = {"train": 0.0, "val": 0.0, "test": 1.0}
    cfg = BuildDataConfig(sources=[{"format": "pairs", "inputs": [str(src)]}], splits=splits)
    build_data(cfg, tmp_path / "plain")
    got = {r["id"]: r.get("cluster") for r in load_records(tmp_path / "plain" / "test.jsonl")}
    assert got == {"pairs:p1": "f1", "pairs:p2": None, "pairs:p3": None}
    # another column named as the cluster through the column mapping
    mapped = {
        "format": "pairs",
        "inputs": [str(src)],
        "options": {"columns": {"cluster": "question"}},
    }
    build_data(BuildDataConfig(sources=[mapped], splits=splits), tmp_path / "mapped")
    got = {r["id"]: r.get("cluster") for r in load_records(tmp_path / "mapped" / "test.jsonl")}
    assert got == {"pairs:p1": None, "pairs:p2": "f1", "pairs:p3": None}
    # a bad value is a row error naming the column
    src.write_text(json.dumps({**rows[0], "cluster": [1, 2]}) + "\n")
    with pytest.raises(DataError, match="cluster"):
        build_data(cfg, tmp_path / "bad")


# -- compare -----------------------------------------------------------------------------------

# 6 facts x 4 pairs; run A (the prompt's policy) is right on every pair of facts 0-2 and wrong
# on every pair of facts 3-5, run B (always right) on all of them.
N_FACTS, PER_FACT = 6, 4


def _records(tmp_path, with_clusters: bool):
    recs = []
    for f in range(N_FACTS):
        policy = "right" if f < 3 else "wrong"
        for k in range(PER_FACT):
            q = f * PER_FACT + k
            recs.append(
                _rec(
                    id=f"r{q:02d}",
                    prompt=f"Q policy:{policy} q{q}",
                    candidates=["GOOD a", "BAD b"] if k % 2 else ["BAD a", "GOOD b"],
                    label=0 if k % 2 else 1,
                    cluster=f"fact-{f}" if with_clusters else None,
                )
            )
    path = tmp_path / ("clustered.jsonl" if with_clusters else "plain.jsonl")
    write_records(path, recs)
    return path


def _run(data, out, force=None):
    from rmkit.eval import run_eval

    cfg = EvalConfig(benchmark="records", data=str(data), output=str(out), judge={"model": "s"})
    return run_eval(cfg, backend=ScriptedJudge(force=force))


def test_compare_uses_the_cluster_bootstrap_when_records_carry_clusters(tmp_path, capsys):
    clustered, plain = _records(tmp_path, True), _records(tmp_path, False)
    _run(clustered, tmp_path / "ca")
    _run(clustered, tmp_path / "cb", force="right")
    _run(plain, tmp_path / "pa")
    _run(plain, tmp_path / "pb", force="right")
    line = read_predictions(tmp_path / "ca" / "predictions.jsonl")[0]
    assert line["extra"] == {"source": "s", "cluster": "fact-0"}

    cl = compare_runs(tmp_path / "ca", tmp_path / "cb", n_boot=1000, seed=0)
    it = compare_runs(tmp_path / "pa", tmp_path / "pb", n_boot=1000, seed=0)
    assert cl["bootstrap"] == "cluster" and cl["n_clusters"] == N_FACTS
    assert it["bootstrap"] == "item" and it["n_clusters"] == it["n_common"] == 24
    assert cl["mean_diff"] == it["mean_diff"] == pytest.approx(0.5)
    # same per-item scores; the cluster interval is wider (6 units, not 24)
    assert cl["ci"][1] - cl["ci"][0] > 1.5 * (it["ci"][1] - it["ci"][0])
    assert "(cluster bootstrap over 6 clusters, 1000 resamples, seed 0)" in ci_line(cl)
    assert "(item bootstrap, 1000 resamples, seed 0)" in ci_line(it)

    # the CLI says which bootstrap ran
    assert main(["eval", "compare", str(tmp_path / "ca"), str(tmp_path / "cb")]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "cluster bootstrap over 6 clusters" in printed and "24 common items" in printed

    # a run made before the data had clusters: the other run's clusters are used
    mixed = compare_runs(tmp_path / "pa", tmp_path / "cb", n_boot=1000, seed=0)
    assert (mixed["bootstrap"], mixed["ci"]) == ("cluster", cl["ci"])


def test_compare_refuses_runs_that_disagree_on_an_items_cluster(tmp_path):
    clustered = _records(tmp_path, True)
    _run(clustered, tmp_path / "a")
    recs = load_records(clustered)
    recs[0]["cluster"] = "fact-5"
    other = tmp_path / "other.jsonl"
    write_records(other, recs)
    _run(other, tmp_path / "b")
    with pytest.raises(RmkitError, match=r'item r00 is in cluster "fact-0" in run A'):
        compare_runs(tmp_path / "a", tmp_path / "b")
