"""Benchmark: batched local-judge throughput of ``rmkit eval`` against one item at a time.

Builds a RewardBench-layout fixture of N text items (default 16) and runs the full
:func:`rmkit.eval.run_eval` path twice on the same items with the same seed and the same
SmolLM2-135M-Instruct judge (``smollm2-135m``, loaded once): once with ``batch_size`` B
(default 8), once with ``batch_size`` 1. Greedy decoding, at most T new tokens (default 32).
Reports samples/s and generated tokens/s of each, the speed-up ratio, and how often the two
runs reached the same verdict (left padding changes float rounding, so greedy outputs can
differ slightly). Appends a row to ``bench/results/eval_throughput.md``; ``--decoder generate`` runs the local
backend with Hugging Face ``generate`` instead of its shared-prompt decoder.

    .venv/bin/python bench/eval_throughput_bench.py [--items 16] [--batch-size 8] [--max-new-tokens 32] [--decoder auto|generate]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "src")):
    if p not in sys.path:
        sys.path.insert(0, p)

RESULTS = ROOT / "bench" / "results" / "eval_throughput.md"
HEADER = (
    "# rmkit eval: batched vs one-at-a-time local judge\n\n"
    "`bench/eval_throughput_bench.py`: the same N RewardBench-layout items judged through\n"
    "`rmkit.eval.run_eval` by SmolLM2-135M-Instruct (fp32, greedy, at most T new tokens), once\n"
    "with batch size B and once with batch size 1. `ratio` = batched samples/s / single samples/s;\n"
    "`same verdict` = fraction of items where both runs parsed to the same outcome; `load avg` =\n"
    "the 1-minute load average before/after (other work on the machine slows both runs; compare\n"
    "the ratio within one row, not absolute speeds across rows). The untrained SmolLM2 judge rarely\n"
    "writes a parsable <answer>, so `same verdict` mostly compares unparsable outputs.\n\n"
    "| date | machine | N | B | T | batched (s) | single (s) | batched samples/s | single samples/s "
    "| batched tok/s | single tok/s | ratio | same verdict | load avg |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
)
SUBSETS = (
    "alpacaeval-easy",
    "mt-bench-med",
    "llmbar-natural",
    "refusals-dangerous",
    "hep-python",
    "math-prm",
)
TOPICS = (
    "boiling water",
    "photosynthesis",
    "the moon",
    "prime numbers",
    "recycling",
    "volcanoes",
    "sleep",
    "rainbows",
)


def write_fixture(root: Path, n: int) -> Path:
    """``root/data/filtered-00000-of-00001.parquet`` with n short question/answer pairs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for k in range(n):
        topic = TOPICS[k % len(TOPICS)]
        rows.append(
            {
                "prompt": f"Explain {topic} to a ten-year-old in two sentences. (question {k})",
                "chosen": f"{topic.capitalize()} is easy to picture: it happens for a clear reason "
                f"that we can see every day. Scientists have measured it carefully (note {k}).",
                "chosen_model": "a",
                "rejected": f"I don't know anything about {topic}. Ask someone else.",
                "rejected_model": "b",
                "subset": SUBSETS[k % len(SUBSETS)],
                "id": k,
            }
        )
    (root / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / "filtered-00000-of-00001.parquet")
    return root


def run_once(
    loaded,
    data: Path,
    out: Path,
    batch_size: int,
    max_new_tokens: int,
    limit: int | None = None,
    decoder: str = "auto",
) -> tuple[float, dict, list]:
    from rmkit.eval import EvalConfig, run_eval
    from rmkit.eval.predictions import read_predictions
    from rmkit.generation.hf import HFBackend

    cfg = EvalConfig(
        benchmark="rewardbench",
        data=str(data),
        output=str(out),
        judge={"model": "smollm2-135m", "batch_size": batch_size},
        sampling={"temperature": 0.0, "max_new_tokens": max_new_tokens},
        seed=0,
        limit=limit,
    )
    backend = HFBackend(loaded, batch_size=batch_size, decoder=decoder)
    t0 = time.perf_counter()
    metrics = run_eval(cfg, backend=backend)
    wall = time.perf_counter() - t0
    return wall, metrics, read_predictions(out / "predictions.jsonl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument(
        "--decoder",
        choices=("auto", "generate"),
        default="auto",
        help="the local backend's decoder (auto: shared-prompt decoder; generate: HF generate)",
    )
    args = ap.parse_args()
    os.environ.setdefault("RMKIT_NO_PROGRESS", "1")

    from rmkit.models.loading import load_model

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    loaded = load_model("smollm2-135m")
    print(f"loaded smollm2-135m in {time.perf_counter() - t0:.1f}s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_fixture(Path(tmp) / "rb", args.items)
        # A short warm-up so one-off costs (kernels, allocator) do not land on the first run.
        run_once(
            loaded, data, Path(tmp) / "warm", args.batch_size, 4, args.batch_size, args.decoder
        )
        wb, mb, pb = run_once(
            loaded, data, Path(tmp) / "batched", args.batch_size, args.max_new_tokens,
            decoder=args.decoder,
        )  # fmt: skip
        ws, ms, ps = run_once(
            loaded, data, Path(tmp) / "single", 1, args.max_new_tokens, decoder=args.decoder
        )
    tokens_b = sum(p["n_tokens"] for p in pb)
    tokens_s = sum(p["n_tokens"] for p in ps)
    picks_b = {p["id"]: p["pick"] for p in pb}
    same = sum(picks_b[p["id"]] == p["pick"] for p in ps) / len(ps)
    n = len(pb)
    ratio = (n / wb) / (n / ws)
    load = f"{load_before:.1f} / {os.getloadavg()[0]:.1f}"
    print(
        f"batched (B={args.batch_size}): {wb:.1f}s, {n / wb:.2f} samples/s, {tokens_b / wb:.1f} tok/s"
    )
    print(f"single  (B=1): {ws:.1f}s, {n / ws:.2f} samples/s, {tokens_s / ws:.1f} tok/s")
    print(
        f"ratio {ratio:.2f}x; same verdict on {same:.0%}; parse failures {mb['parse_failure_rate']:.0%} / {ms['parse_failure_rate']:.0%}"
    )
    machine = f"{platform.machine()} {os.cpu_count()} cpu, decoder {args.decoder}"
    row = (
        f"| {datetime.date.today()} | {machine} | {n} | {args.batch_size} | {args.max_new_tokens} | {wb:.1f} | {ws:.1f} "
        f"| {n / wb:.2f} | {n / ws:.2f} | {tokens_b / wb:.1f} | {tokens_s / ws:.1f} | {ratio:.2f} | {same:.0%} | {load} |\n"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if not RESULTS.exists():
        RESULTS.write_text(HEADER)
    with open(RESULTS, "a") as fh:
        fh.write(row)
    print(f"appended to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
