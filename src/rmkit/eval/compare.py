"""``rmkit eval compare DIR_A DIR_B``: two runs side by side, with a paired bootstrap CI.

Both runs are re-scored from their predictions (nothing is generated). The confidence interval
is for the mean item-level difference B - A of the headline protocol's per-item scores over the
items both runs scored, as the percentile interval of seeded resampled mean differences:

- **item bootstrap** (items carry no cluster): the items are resampled with replacement;
- **cluster bootstrap** (some item carries a ``cluster``, e.g. a records file whose pairs share
  a fact): the clusters are resampled with replacement, the same clusters for both runs, and
  each resample's statistic is the mean difference over all items of the drawn clusters (sum
  of the drawn cluster sums / sum of their sizes). Items that share a unit are not independent,
  so resampling them one by one understates the interval's width. An item without a cluster
  is a cluster of its own.

With one item per cluster the two bootstraps draw the same indices and give the same interval.

:func:`compare_stages` does the stage-wise accounting of several runs in training order
(untrained -> after SFT -> after RL): each run's accuracy with its own (item or cluster)
bootstrap interval, each stage's gain over the run before it with the paired interval, and
the fraction of verdicts each stage changed.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from rmkit.errors import RmkitError

BLOCK_CELLS = 2_000_000  # resampled indices held in memory at once


def _differences(a: Sequence[float], b: Sequence[float]) -> Any:
    import numpy as np

    if len(a) != len(b) or not len(a):
        raise RmkitError("paired bootstrap needs two non-empty score lists of the same length")
    return np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)


def _interval(sums: Any, sizes: Any, n_boot: int, seed: int, level: float) -> tuple[float, float]:
    """Percentile interval of ``sum(sums[idx]) / sum(sizes[idx])`` over ``n_boot`` resamples of
    ``k = len(sums)`` indices drawn with replacement: ``rng.integers(0, k, size=(block, k))``
    with ``rng = numpy.random.default_rng(seed)``, in blocks of ``max(1, 2_000_000 // k)``
    resamples (so the draws depend only on ``k``, ``n_boot`` and ``seed``)."""
    import numpy as np

    k = len(sums)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot, dtype=np.float64)
    step = max(1, BLOCK_CELLS // k)
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        idx = rng.integers(0, k, size=(stop - start, k))
        means[start:stop] = sums[idx].sum(axis=1) / sizes[idx].sum(axis=1)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def paired_bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Mean of ``b - a`` and its percentile item-bootstrap interval.

    ``a``, ``b``: per-item scores of the same n items (n >= 1) in the same order. Each of the
    ``n_boot`` resamples draws n item indices with replacement (``numpy.random.default_rng
    (seed)``) and takes the mean difference. Returns ``(mean_diff, low, high)``.
    """
    import numpy as np

    d = _differences(a, b)
    low, high = _interval(d, np.ones_like(d), n_boot, seed, level)
    return float(d.mean()), low, high


def paired_cluster_bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    clusters: Sequence[Hashable],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Mean of ``b - a`` and its percentile cluster-bootstrap interval.

    ``a``, ``b``: per-item scores of the same n items in the same order; ``clusters[i]``: the
    cluster (any hashable) of item ``i``. The k clusters, in order of first appearance, are
    resampled: each of the ``n_boot`` resamples draws k cluster indices with replacement (the
    same draws as :func:`paired_bootstrap_ci` makes for k items with the same seed) and its
    statistic is the mean of ``b - a`` over every item of the drawn clusters, i.e. the sum of
    the drawn clusters' difference sums over the sum of their sizes. When every cluster holds
    one item and the clusters come in item order, the result equals
    :func:`paired_bootstrap_ci`'s exactly. Returns ``(mean_diff, low, high)``.
    """
    d = _differences(a, b)
    sums, sizes = _cluster_sums(d, clusters)
    low, high = _interval(sums, sizes, n_boot, seed, level)
    return float(d.mean()), low, high


def _cluster_sums(values: Any, clusters: Sequence[Hashable]) -> tuple[Any, Any]:
    """Per-cluster sums of ``values`` and cluster sizes, clusters in order of first appearance."""
    import numpy as np

    if len(clusters) != len(values):
        raise RmkitError(
            f"cluster bootstrap: {len(clusters)} cluster labels for {len(values)} items",
            hint="pass one cluster per item",
        )
    index: dict[Hashable, int] = {}
    try:
        codes = np.fromiter(
            (index.setdefault(c, len(index)) for c in clusters), dtype=np.intp, count=len(values)
        )
    except TypeError as e:
        raise RmkitError(f"cluster bootstrap: a cluster label is not hashable ({e})") from None
    sums = np.bincount(codes, weights=values, minlength=len(index))
    sizes = np.bincount(codes, minlength=len(index)).astype(np.float64)
    return sums, sizes


def bootstrap_mean_ci(
    scores: Sequence[float],
    clusters: Sequence[Hashable] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Mean of one run's per-item ``scores`` (e.g. its accuracy) and its percentile bootstrap
    interval: items resampled with replacement, or, with ``clusters`` (one label per item),
    clusters resampled with replacement and each resample's statistic the mean over every item
    of the drawn clusters. The draws are those of :func:`paired_bootstrap_ci` (item) and
    :func:`paired_cluster_bootstrap_ci` (cluster) with the same seed, so with ``a`` all zeros
    those functions return the same triple. Returns ``(mean, low, high)``."""
    import numpy as np

    if not len(scores):
        raise RmkitError("bootstrap of a mean needs a non-empty score list")
    x = np.asarray(scores, dtype=np.float64)
    if clusters is None:
        sums, sizes = x, np.ones_like(x)
    else:
        sums, sizes = _cluster_sums(x, clusters)
    low, high = _interval(sums, sizes, n_boot, seed, level)
    return float(x.mean()), low, high


def _scored(out: str | Path) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    """Metrics, headline per-item scores and the items' clusters (``extra.cluster`` of their
    prediction lines; items without one are left out) of one run."""
    metrics, scores, clusters, _ = _scored_with_verdicts(out)
    return metrics, scores, clusters


def _scored_with_verdicts(
    out: str | Path,
) -> tuple[dict[str, Any], dict[str, float], dict[str, Any], dict[str, tuple]]:
    """:func:`_scored` and each item's verdicts: the ``pick`` of each of its samples (the
    candidate index, ``"tie"``/``"both_bad"``, or None when nothing was parsed), in sample order."""
    from rmkit.eval.benchmarks import benchmark_metrics
    from rmkit.eval.outputs import load_run

    config, dataset, preds = load_run(out)
    metrics, score = benchmark_metrics(preds, config, dataset)
    clusters: dict[str, Any] = {}
    picks: dict[str, list[tuple[int, Any]]] = {}
    for p in preds:
        cluster = (p.get("extra") or {}).get("cluster")
        if cluster is not None:
            clusters.setdefault(p["id"], cluster)
        picks.setdefault(p["id"], []).append((int(p.get("sample") or 0), p.get("pick")))
    verdicts = {
        i: tuple(pick for _, pick in sorted(rows, key=lambda r: r[0])) for i, rows in picks.items()
    }
    return metrics, score.item_scores, clusters, verdicts


def item_clusters(
    items: Sequence[str], clusters_a: dict[str, Any], clusters_b: dict[str, Any]
) -> list[Hashable] | None:
    """The cluster key of each item (its cluster in either run; an item without one is its own
    cluster), or None when no item has a cluster. Two runs that give an item different clusters
    were not run on the same data: an error."""
    if not any(i in clusters_a or i in clusters_b for i in items):
        return None
    keys: list[Hashable] = []
    for i in items:
        ca, cb = clusters_a.get(i), clusters_b.get(i)
        ka = None if ca is None else json.dumps(ca)  # 1, 1.0, "1" and true stay apart
        kb = None if cb is None else json.dumps(cb)
        if ka is not None and kb is not None and ka != kb:
            raise RmkitError(
                f"item {i} is in cluster {ka} in run A but in cluster {kb} in run B",
                hint="compare two runs of the same data",
            )
        key = ka if ka is not None else kb
        keys.append(("item", i) if key is None else ("cluster", key))
    return keys


def _rows(ma: dict[str, Any], mb: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    rows: list[tuple[str, Any, Any]] = [("overall", ma.get("overall"), mb.get("overall"))]
    if "macro" in ma or "macro" in mb:
        rows.append(("macro", ma.get("macro"), mb.get("macro")))
    cats = list(dict.fromkeys(list(ma.get("categories", {})) + list(mb.get("categories", {}))))
    rows += [
        (f"  {c}", ma.get("categories", {}).get(c), mb.get("categories", {}).get(c)) for c in cats
    ]
    for name in dict.fromkeys(list(ma["protocols"]) + list(mb["protocols"])):
        if name == ma["protocol"]:
            continue
        pa, pb = ma["protocols"].get(name, {}), mb["protocols"].get(name, {})
        rows.append((f"{name} overall", pa.get("overall"), pb.get("overall")))
    for key in ("parse_failure_rate", "picked_first_rate", "position_consistency"):
        rows.append((key.replace("_", " "), ma.get(key), mb.get(key)))
    rows.append(("n scored", ma.get("n_scored"), mb.get("n_scored")))
    return rows


def compare_runs(
    dir_a: str | Path, dir_b: str | Path, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Side-by-side numbers of two runs and the bootstrap CI of the paired difference.

    The cluster bootstrap is used when any common item carries a cluster (module docstring);
    ``bootstrap`` says which one ran and ``n_clusters`` how many units were resampled (the
    number of common items for the item bootstrap)."""
    ma, sa, ca = _scored(dir_a)
    mb, sb, cb = _scored(dir_b)
    if ma["benchmark"] != mb["benchmark"]:
        raise RmkitError(
            f"cannot compare a {ma['benchmark']} run with a {mb['benchmark']} run",
            hint="compare two runs of the same benchmark",
        )
    common = sorted(set(sa) & set(sb))
    if not common:
        raise RmkitError(
            "the two runs have no scored item in common",
            hint="were they run on the same data and split?",
        )
    a, b = [sa[i] for i in common], [sb[i] for i in common]
    clusters = item_clusters(common, ca, cb)
    if clusters is None:
        mean_diff, low, high = paired_bootstrap_ci(a, b, n_boot, seed)
        n_clusters = len(common)
    else:
        mean_diff, low, high = paired_cluster_bootstrap_ci(a, b, clusters, n_boot, seed)
        n_clusters = len(set(clusters))
    return {
        "benchmark": ma["benchmark"],
        "protocol": ma["protocol"],
        "model_a": ma.get("model"),
        "model_b": mb.get("model"),
        "rows": _rows(ma, mb),
        "n_common": len(common),
        "n_clusters": n_clusters,
        "bootstrap": "item" if clusters is None else "cluster",
        "mean_diff": mean_diff,
        "ci": [low, high],
        "n_boot": n_boot,
        "seed": seed,
    }


def verdict_changes(
    verdicts_a: dict[str, tuple],
    verdicts_b: dict[str, tuple],
    scores_a: dict[str, float],
    scores_b: dict[str, float],
) -> dict[str, Any]:
    """How the verdicts of two runs of the same items differ, over the items both scored.

    An item's verdict is the tuple of its samples' picks (:func:`_scored_with_verdicts`); it
    changed when the tuples differ. ``fixed``/``broken``: items whose headline score rose/fell.
    Returns ``{"n", "changed", "fraction", "fixed", "broken"}`` (fraction None when n is 0)."""
    common = [
        i for i in sorted(set(scores_a) & set(scores_b)) if i in verdicts_a and i in verdicts_b
    ]
    changed = sum(1 for i in common if verdicts_a[i] != verdicts_b[i])
    fixed = sum(1 for i in common if scores_b[i] > scores_a[i])
    broken = sum(1 for i in common if scores_b[i] < scores_a[i])
    n = len(common)
    return {
        "n": n,
        "changed": changed,
        "fraction": changed / n if n else None,
        "fixed": fixed,
        "broken": broken,
    }


def _merged_clusters(common: list[str], per_run: list[dict[str, Any]]) -> list[Hashable] | None:
    """:func:`item_clusters` over several runs (every pair must agree)."""
    merged: dict[str, Any] = {}
    for clusters in per_run:
        item_clusters(common, merged, clusters)  # raises when a run disagrees with an earlier one
        for i in common:
            if i not in merged and i in clusters:
                merged[i] = clusters[i]
    return item_clusters(common, merged, {})


def compare_stages(
    dirs: Sequence[str | Path], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Stage-wise accounting of several runs of the same benchmark, in training order (e.g.
    untrained, after SFT, after RL), over the items every run scored.

    Each run gets its mean headline item score with its own bootstrap interval
    (:func:`bootstrap_mean_ci`), each run after the first the paired difference from the run
    before it with its paired interval (:func:`paired_bootstrap_ci`, or
    :func:`paired_cluster_bootstrap_ci` when any common item carries a cluster), and the
    verdict changes from the run before it (:func:`verdict_changes`, over the items both of the
    two scored). The stage differences add up to the first-to-last difference on these items.
    All intervals use ``seed``. Returns ``{"benchmark", "protocol", "n_common", "n_clusters",
    "bootstrap", "runs": [{"model", "overall", "accuracy", "ci"}], "gains": [{"mean_diff",
    "ci"}], "changes": [verdict_changes(...)], "n_boot", "seed"}`` (``gains``/``changes``: one
    per run after the first)."""
    if len(dirs) < 2:
        raise RmkitError("stage-wise comparison needs at least two runs")
    runs = [_scored_with_verdicts(d) for d in dirs]
    benchmarks = {m["benchmark"] for m, *_ in runs}
    if len(benchmarks) > 1:
        raise RmkitError(
            f"cannot compare runs of different benchmarks ({', '.join(sorted(benchmarks))})",
            hint="compare runs of the same benchmark",
        )
    common = sorted(set.intersection(*(set(scores) for _, scores, _, _ in runs)))
    if not common:
        raise RmkitError(
            "the runs have no scored item in common",
            hint="were they run on the same data and split?",
        )
    clusters = _merged_clusters(common, [c for _, _, c, _ in runs])
    out_runs, gains, changes = [], [], []
    for j, (metrics, scores, _, verdicts) in enumerate(runs):
        x = [scores[i] for i in common]
        mean, low, high = bootstrap_mean_ci(x, clusters, n_boot, seed, level)
        out_runs.append(
            {"model": metrics.get("model"), "overall": metrics.get("overall"), "accuracy": mean,
             "ci": [low, high]}
        )  # fmt: skip
        if j == 0:
            continue
        _, prev_scores, _, prev_verdicts = runs[j - 1]
        a = [prev_scores[i] for i in common]
        if clusters is None:
            diff, low, high = paired_bootstrap_ci(a, x, n_boot, seed, level)
        else:
            diff, low, high = paired_cluster_bootstrap_ci(a, x, clusters, n_boot, seed, level)
        gains.append({"mean_diff": diff, "ci": [low, high]})
        changes.append(verdict_changes(prev_verdicts, verdicts, prev_scores, scores))
    return {
        "benchmark": runs[0][0]["benchmark"],
        "protocol": runs[0][0]["protocol"],
        "n_common": len(common),
        "n_clusters": len(common) if clusters is None else len(set(clusters)),
        "bootstrap": "item" if clusters is None else "cluster",
        "runs": out_runs,
        "gains": gains,
        "changes": changes,
        "n_boot": n_boot,
        "seed": seed,
    }


def comparison_table(result: dict[str, Any]) -> Any:
    """A rich Table: metric | A | B | delta (B - A), accuracies in percent."""
    from rich.table import Table

    from rmkit.eval.report import pct

    table = Table(
        title=f"{result['benchmark']} ({result['protocol']}): A = {result['model_a']}  B = {result['model_b']}",
        title_justify="left",
    )
    for name, justify in (
        ("metric", "left"),
        ("A", "right"),
        ("B", "right"),
        ("delta (B-A)", "right"),
    ):
        table.add_column(name, justify=justify)
    for name, a, b in result["rows"]:
        if name == "n scored":
            delta = "-" if a is None or b is None else f"{b - a:+d}"
            table.add_row(name, str(a), str(b), delta)
            continue
        delta = "-" if a is None or b is None else f"{100 * (b - a):+.1f}"
        table.add_row(name, pct(a), pct(b), delta)
    return table


def bootstrap_phrase(result: dict[str, Any]) -> str:
    """``"cluster bootstrap over K clusters"`` or ``"item bootstrap"``."""
    if result.get("bootstrap") == "cluster":
        return f"cluster bootstrap over {result['n_clusters']} clusters"
    return "item bootstrap"


def ci_line(result: dict[str, Any]) -> str:
    low, high = result["ci"]
    return (
        f"paired bootstrap 95% CI of the item-level difference B-A: {100 * result['mean_diff']:+.1f} "
        f"[{100 * low:+.1f}, {100 * high:+.1f}] points over {result['n_common']} common items "
        f"({bootstrap_phrase(result)}, {result['n_boot']} resamples, seed {result['seed']})"
    )
