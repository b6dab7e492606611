"""From prediction lines to ``metrics.json``: item results, shared statistics, the dispatch.

:func:`collect_items` groups prediction lines by item and takes the voting@k majority;
each benchmark module turns those :class:`ItemResult` objects into its official protocols
(:class:`BenchScore`); :func:`compute_metrics` adds the position-control statistics and the
run description. Everything here is a function of the predictions and the resolved config, so
re-scoring a saved run reproduces ``metrics.json`` byte for byte.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rmkit.eval.items import BOTH_BAD, TIE
from rmkit.eval.position import (
    Pick,
    majority,
    picked_first_rate,
    position_consistency,
    split_sample,
)

HEADLINE_KEYS = ("n", "overall", "macro", "categories", "subcategories")


@dataclass
class ItemResult:
    """One item's samples, combined. ``scores`` counts votes per candidate index."""

    id: str
    category: str
    subcategory: str | None
    group: str | None
    label: int | None
    label_kind: str
    correct_set: list[int]
    n_candidates: int
    extra: dict[str, Any]
    picks: list[Pick]
    winner: Pick
    counts: dict[str, int]
    tie_broken: bool

    @property
    def gold(self) -> int | str:
        if self.label_kind == "preferred":
            return self.label if self.label is not None else -1
        return TIE if self.label_kind == "tie" else BOTH_BAD

    def is_right(self, pick: Pick) -> bool:
        """Whether one outcome matches the label (any correct candidate, or the tie kind)."""
        if pick is None:
            return False
        if self.label_kind == "preferred":
            return isinstance(pick, int) and pick in self.correct_set
        return pick == self.gold

    @property
    def strict_correct(self) -> bool:
        """The majority outcome is right; an item with no parsable sample is wrong."""
        return self.is_right(self.winner)

    @property
    def scores(self) -> list[float]:
        """Votes per candidate index, a score vector of length ``n_candidates``."""
        return [float(self.counts.get(str(i), 0)) for i in range(self.n_candidates)]


@dataclass
class BenchScore:
    """A benchmark's result: protocols by name, which one is the headline, item-level scores
    of the headline protocol (for paired comparisons), and extra report tables."""

    headline: str
    protocols: dict[str, dict[str, Any]]
    item_scores: dict[str, float]
    notes: list[str] = field(default_factory=list)


def collect_items(predictions: list[dict[str, Any]], seed: int) -> list[ItemResult]:
    """Group (deduplicated, sorted) prediction lines into items; vote within each item."""
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in predictions:
        by_id[p["id"]].append(p)
    items = []
    for item_id in sorted(by_id):
        lines = sorted(by_id[item_id], key=lambda p: int(p["sample"]))
        first = lines[0]
        picks = [p["pick"] for p in lines]
        vote = majority(picks, f"{seed}:{item_id}")
        items.append(
            ItemResult(
                id=item_id,
                category=first["category"],
                subcategory=first.get("subcategory"),
                group=first.get("group"),
                label=first.get("label"),
                label_kind=first["label_kind"],
                correct_set=list(first["correct_set"]),
                n_candidates=int(first["n_candidates"]),
                extra=first.get("extra") or {},
                picks=picks,
                winner=vote.winner,
                counts=vote.counts,
                tie_broken=vote.tie_broken,
            )
        )
    return items


def mean(values: Iterable[float]) -> float | None:
    vals = list(values)
    return sum(vals) / len(vals) if vals else None


def grouped_mean(
    items: Iterable[Any], key: Callable[[Any], str | None], value: Callable[[Any], float]
) -> dict[str, float]:
    """Mean of ``value`` per ``key`` (items whose key is None are left out), keys sorted."""
    groups: dict[str, list[float]] = defaultdict(list)
    for it in items:
        k = key(it)
        if k is not None:
            groups[k].append(value(it))
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


def accuracy_protocol(
    items: list[ItemResult], value: Callable[[ItemResult], float], macro: bool = False
) -> dict[str, Any]:
    """``n``, micro ``overall``, ``categories``, ``subcategories`` (and ``macro``) of a 0/1 or
    fractional per-item value."""
    out: dict[str, Any] = {"n": len(items), "overall": mean(value(it) for it in items)}
    cats = grouped_mean(items, lambda it: it.category, value)
    if macro:
        out["macro"] = mean(cats.values())
    out["categories"] = cats
    subs = grouped_mean(items, lambda it: it.subcategory, value)
    if subs:
        out["subcategories"] = subs
    return out


def position_stats(
    predictions: list[dict[str, Any]], items: list[ItemResult], n_slots: int
) -> dict[str, Any]:
    """Parse failures, picked-first rate, position consistency (both-orders runs), vote ties."""
    n_unparsable = sum(1 for p in predictions if p["pick"] is None)
    shown = [p.get("shown_choice") for p in predictions]
    pairs = []
    if n_slots == 2:
        by_key = {(p["id"], int(p["sample"])): p["pick"] for p in predictions}
        for (item_id, sample), pick in by_key.items():
            _vote, slot = split_sample(sample, 2)
            if slot == 0 and (item_id, sample + 1) in by_key:
                pairs.append((pick, by_key[(item_id, sample + 1)]))
    return {
        "n_samples": len(predictions),
        "n_unparsable": n_unparsable,
        "parse_failure_rate": n_unparsable / len(predictions) if predictions else None,
        "picked_first_rate": picked_first_rate(shown),
        "position_consistency": position_consistency(pairs) if n_slots == 2 else None,
        "n_order_pairs": len(pairs),
        "n_vote_ties": sum(1 for it in items if it.tie_broken),
        "n_items_unparsable": sum(1 for it in items if it.winner is None),
    }


def compute_metrics(
    predictions: list[dict[str, Any]],
    config: dict[str, Any],
    dataset: dict[str, Any] | None,
    score_items: Callable[[list[ItemResult]], BenchScore],
) -> tuple[dict[str, Any], BenchScore]:
    """``metrics.json`` content from deduplicated, sorted prediction lines, the resolved config
    (a dict as saved in ``config.json``), the loading summary (``dataset.json``, optional) and
    the benchmark's scoring function (:func:`rmkit.eval.benchmarks.benchmark_metrics` passes
    the registered one). Also returns the benchmark's full score."""
    items = collect_items(predictions, int(config["seed"]))
    score = score_items(items)
    head = score.protocols[score.headline]
    n_slots = 2 if config.get("orders") == "both" else 1
    judge = config.get("judge") or {}
    metrics: dict[str, Any] = {"benchmark": config["benchmark"], "protocol": score.headline}
    metrics.update({k: head[k] for k in HEADLINE_KEYS if k in head})
    metrics["n_loaded"] = int(dataset["n_items"]) if dataset else len(items)
    metrics["n_judged"] = len(items)
    metrics["n_scored"] = head["n"]
    if dataset:
        metrics["n_rows_read"] = dataset.get("n_rows")
        metrics["skipped_rows"] = dataset.get("skipped", {})
    metrics.update(position_stats(predictions, items, n_slots))
    metrics["protocols"] = score.protocols
    metrics["notes"] = score.notes
    metrics.update(
        {
            "model": _judge_name(judge),
            "template": config.get("template"),
            "sampling": config.get("sampling"),
            "seed": config.get("seed"),
            "orders": config.get("orders"),
            "votes": config.get("votes"),
            "split": config.get("split"),
            "subset": config.get("subset"),
            "limit": config.get("limit"),
        }
    )
    return metrics, score


def _judge_name(judge: dict[str, Any]) -> str:
    if judge.get("base_url"):
        return f"{judge.get('api_model')} @ {judge['base_url']}"
    name = str(judge.get("model") or "<none>")
    return name + (f" + {judge['adapter']}" if judge.get("adapter") else "")
