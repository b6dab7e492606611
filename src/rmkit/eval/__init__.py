"""Reward-benchmark evaluation: official protocols, position control, reports.

Public interface::

    EvalConfig                      the ``kind: eval`` config (rmkit.eval.config)
    run_eval(cfg, backend=None)     judge (or resume) and write DIR/metrics.json etc.
    rescore(dir)                    recompute metrics/report from DIR/predictions.jsonl
    compare_runs(dir_a, dir_b)      side-by-side numbers + paired (item or cluster) bootstrap CI
    BENCHMARKS                      name -> loader + official metric (rmkit.eval.benchmarks)
"""

from rmkit.eval.benchmarks import BENCHMARKS, Benchmark
from rmkit.eval.compare import compare_runs, paired_bootstrap_ci, paired_cluster_bootstrap_ci
from rmkit.eval.config import EvalConfig, JudgeConfig, SamplingConfig
from rmkit.eval.outputs import finalize as rescore
from rmkit.eval.runner import run_eval

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "EvalConfig",
    "JudgeConfig",
    "SamplingConfig",
    "compare_runs",
    "paired_bootstrap_ci",
    "paired_cluster_bootstrap_ci",
    "rescore",
    "run_eval",
]
