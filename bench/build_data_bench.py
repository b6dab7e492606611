"""Benchmark: `rmkit build-data` on synthetic HH-RLHF-style rows.

Generates N rows (default 200,000) of multi-turn HH-RLHF transcripts, runs the real CLI in a
child process, and reports rows/s and the child's peak resident memory. Appends the result to
bench/results/build_data.md.

    .venv/bin/python bench/build_data_bench.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = [
    "the",
    "a",
    "model",
    "answer",
    "question",
    "data",
    "reward",
    "human",
    "assistant",
    "helpful",
    "harmless",
    "river",
    "mountain",
    "city",
    "number",
    "seven",
    "blue",
    "quickly",
    "explain",
    "because",
    "however",
    "therefore",
    "example",
    "people",
    "time",
]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def make_rows(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            turns = rng.randint(1, 3)
            prefix = ""
            for _ in range(turns - 1):
                prefix += f"\n\nHuman: {sentence(rng, rng.randint(5, 25))}\n\nAssistant: {sentence(rng, rng.randint(10, 60))}"
            prefix += f"\n\nHuman: {sentence(rng, rng.randint(5, 30))} #{i}\n\nAssistant:"
            row = {
                "chosen": f"{prefix} {sentence(rng, rng.randint(10, 120))}",
                "rejected": f"{prefix} {sentence(rng, rng.randint(10, 120))}",
            }
            fh.write(json.dumps(row) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "helpful-base" / "train.jsonl"
        data.parent.mkdir()
        make_rows(data, args.rows)
        size_mb = data.stat().st_size / 1e6
        rmkit = [sys.executable, "-m", "rmkit"]
        env = {**os.environ, "RMKIT_NO_PROGRESS": "1"}
        t0 = time.perf_counter()
        subprocess.run(
            [
                *rmkit,
                "build-data",
                "--format",
                "hh-rlhf",
                "--input",
                str(data),
                "--output",
                str(Path(tmp) / "out"),
            ],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - t0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_mb = usage.ru_maxrss / 1024
        cpu = usage.ru_utime + usage.ru_stime
        manifest = json.loads((Path(tmp) / "out" / "manifest.json").read_text())
    rate = args.rows / wall
    line = (
        f"| {datetime.date.today()} | {args.rows:,} | {size_mb:.0f} MB | {wall:.1f} s | {rate:,.0f} rows/s | {args.rows / cpu:,.0f} rows/CPU-s | "
        f"{peak_mb:.0f} MB | {sum(manifest['counts']['total'].values()):,} | {platform.processor() or platform.machine()}, {os.cpu_count()} cores |"
    )
    print(line)
    if not args.no_record:
        out = Path(__file__).parent / "results" / "build_data.md"
        if not out.exists():
            out.write_text(
                "# build-data throughput (synthetic HH-RLHF rows)\n\n"
                "`bench/build_data_bench.py`: wall time of the whole CLI process (start-up, conversion, "
                "hashing, writing, manifest); rate (CPU time) divides by the child's user+sys time, which other load on the machine disturbs less; peak = max RSS of the child process.\n\n"
                "| date | rows | input | wall | rate (wall) | rate (CPU time) | peak RSS | records out | machine |\n|---|---|---|---|---|---|---|---|---|\n"
            )
        with open(out, "a") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
