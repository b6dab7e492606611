"""The benchmarks ``rmkit eval`` scores: one loader + official metric module each.

Every module exposes ``load(ctx: LoadContext) -> LoadResult`` (native rows -> eval items) and
``score(items: list[ItemResult]) -> BenchScore`` (the official protocols). :data:`BENCHMARKS`
is the explicit registry with each benchmark's protocol defaults (split, voting, sampling).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rmkit.eval.benchmarks import (
    genai_bench,
    imagereward,
    mm_rlhf,
    multimodal_rewardbench,
    records,
    rewardbench,
    rewardbench2,
    vl_rewardbench,
)
from rmkit.eval.metrics import BenchScore, compute_metrics


@dataclass(frozen=True)
class Benchmark:
    name: str
    load: Callable[..., Any]
    score: Callable[..., Any]
    description: str
    default_split: str | None = None
    default_votes: int = 1
    default_sampling: dict[str, float] = field(
        default_factory=lambda: {"temperature": 0.0, "top_p": 1.0}
    )


BENCHMARKS: dict[str, Benchmark] = {
    "vl-rewardbench": Benchmark(
        "vl-rewardbench",
        vl_rewardbench.load,
        vl_rewardbench.score,
        "VL-RewardBench: strict and official (k=5 majority) accuracy, overall and macro",
        default_split="test",
        default_votes=5,
        default_sampling={"temperature": 0.2, "top_p": 0.2},
    ),
    "multimodal-rewardbench": Benchmark(
        "multimodal-rewardbench",
        multimodal_rewardbench.load,
        multimodal_rewardbench.score,
        "Multimodal RewardBench: per category with safety and reasoning sub-splits",
    ),
    "genai-bench": Benchmark(
        "genai-bench",
        genai_bench.load,
        genai_bench.score,
        "GenAI-Bench image generation / editing: 4-way, ties excluded, ties as errors",
        default_split="test_v1",
    ),
    "rewardbench": Benchmark(
        "rewardbench",
        rewardbench.load,
        rewardbench.score,
        "RewardBench: section-weighted subsets, overall = mean of four sections",
        default_split="filtered",
    ),
    "rewardbench2": Benchmark(
        "rewardbench2",
        rewardbench2.load,
        rewardbench2.score,
        "RewardBench 2: best-of-N fractional credit, Ties formula, mean of six subsets",
        default_split="test",
    ),
    "mm-rlhf": Benchmark(
        "mm-rlhf",
        mm_rlhf.load,
        mm_rlhf.score,
        "MM-RLHF-RewardBench: pair accuracy (Acc) and all-pairs-of-an-id accuracy (Acc+)",
    ),
    "imagereward": Benchmark(
        "imagereward",
        imagereward.load,
        imagereward.score,
        "ImageReward test: accuracy over all image pairs with different human ranks",
    ),
    "records": Benchmark(
        "records",
        records.load,
        records.score,
        "unified records (e.g. a held-out split of rmkit build-data): accuracy per task",
        default_split="test",
    ),
}


def benchmark_metrics(
    predictions: list[dict[str, Any]], config: dict[str, Any], dataset: dict[str, Any] | None = None
) -> tuple[dict[str, Any], BenchScore]:
    """:func:`rmkit.eval.metrics.compute_metrics` with the scoring of ``config["benchmark"]``."""
    return compute_metrics(predictions, config, dataset, BENCHMARKS[config["benchmark"]].score)
