"""Benchmark: ``rmkit serve`` throughput, 16 concurrent clients against the same 16 requests
sent one at a time.

Starts the server in this process (the real FastAPI app on uvicorn, ``127.0.0.1``, a free port)
on each model of ``--models`` (default ``tiny-llama``; add ``smollm2-135m`` for a real small
model), then, per model and per run:

- **sequential**: R distinct chat requests (default 16), each sent after the previous answer;
- **concurrent**: the same R requests from R client threads at once. The first request starts
  alone; the others queue behind it and the model worker batches them into one
  ``generate_detailed`` call (same sampling parameters, no seed).

Requests are greedy (``temperature: 0``, batchable: no seed) with ``max_tokens`` M (default 64).
Greedy answers do not depend on batching, so both modes generate the same tokens; the table
reports the completion tokens per second of each mode and their ratio (concurrent /
sequential throughput), plus how many generate calls the concurrent run took. Best of
``--repeat`` runs (default 3) per mode. Appends a row per model to
``bench/results/serve_concurrency.md``.

    .venv/bin/python bench/serve_concurrency_bench.py [--models tiny-llama smollm2-135m]
        [--requests 16] [--max-tokens 64] [--repeat 3] [--device auto]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

RESULTS = ROOT / "bench" / "results" / "serve_concurrency.md"
HEADER = (
    "# `rmkit serve` concurrency benchmark\n\n"
    "`bench/serve_concurrency_bench.py`: R distinct greedy chat requests (max_tokens M) to\n"
    "`rmkit serve` in-process, sent one at a time (sequential) and all at once from R client\n"
    "threads (concurrent), where the model worker batches queued requests into one generate\n"
    "call. Throughput = completion tokens / wall time, best of N runs per mode; ratio =\n"
    "concurrent / sequential throughput. `calls` = generate calls in the best concurrent run.\n\n"
    "| date | machine | load avg (1 min) | model | device | R | M | sequential (s) "
    "| concurrent (s) | sequential (tok/s) | concurrent (tok/s) | ratio | calls |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
)
QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Why is the sky blue?",
    "How many legs does a spider have?",
    "Give a synonym for happy.",
    "What is 12 times 12?",
    "Who wrote Hamlet?",
    "What does a thermometer measure?",
    "Name a planet with rings.",
    "What is the boiling point of water?",
    "Translate 'thank you' into Spanish.",
    "What is photosynthesis?",
    "How many days are in a leap year?",
    "What is the largest ocean?",
    "Name a mammal that can fly.",
    "What language is spoken in Brazil?",
]


def _ask(url: str, question: str, max_tokens: int) -> int:
    body = {
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    req = urllib.request.Request(
        url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return int(json.loads(r.read())["usage"]["completion_tokens"])


def _sequential(url: str, questions: list[str], max_tokens: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    tokens = sum(_ask(url, q, max_tokens) for q in questions)
    return time.perf_counter() - t0, tokens


def _concurrent(url: str, questions: list[str], max_tokens: int) -> tuple[float, int]:
    counts = [0] * len(questions)
    barrier = threading.Barrier(len(questions) + 1)

    def run(i: int) -> None:
        barrier.wait()
        counts[i] = _ask(url, questions[i], max_tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, sum(counts)


def bench_model(name: str, args: argparse.Namespace) -> dict:
    from rmkit.serve import build_app
    from rmkit.serve.server import ModelServer

    app = build_app(name, device=args.device, batch_size=args.batch_size)
    engine = app.state.engine
    questions = (QUESTIONS * (args.requests // len(QUESTIONS) + 1))[: args.requests]
    questions = [f"{q} ({i})" for i, q in enumerate(questions)]  # all distinct
    with ModelServer(app, "127.0.0.1", 0) as srv:
        _ask(srv.url, "warm up", 4)
        seq, conc, calls = [], [], []
        for _ in range(args.repeat):  # interleaved, so both modes see the same machine load
            seq.append(_sequential(srv.url, questions, args.max_tokens))
            before = engine.backend.stats["calls"]
            conc.append(_concurrent(srv.url, questions, args.max_tokens))
            calls.append(engine.backend.stats["calls"] - before)
    best_seq = min(seq)
    best_i = min(range(len(conc)), key=lambda i: conc[i][0])
    best_conc = conc[best_i]
    device = str(engine.loaded.device)
    return {
        "model": name,
        "device": device,
        "seq_s": best_seq[0],
        "conc_s": best_conc[0],
        "seq_tps": best_seq[1] / best_seq[0],
        "conc_tps": best_conc[1] / best_conc[0],
        "calls": calls[best_i],
        "all_seq": [round(s, 2) for s, _ in seq],
        "all_conc": [round(s, 2) for s, _ in conc],
    }


def _machine() -> str:
    import torch

    parts = [platform.machine(), f"{os.cpu_count()} CPUs", f"Python {platform.python_version()}"]
    parts.append(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    return ", ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["tiny-llama"])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    machine = _machine()
    for name in args.models:
        r = bench_model(name, args)
        ratio = r["conc_tps"] / r["seq_tps"]
        print(
            f"{name} on {r['device']}: sequential {r['seq_s']:.2f}s ({r['seq_tps']:.1f} tok/s, "
            f"runs {r['all_seq']}), concurrent {r['conc_s']:.2f}s ({r['conc_tps']:.1f} tok/s, "
            f"runs {r['all_conc']}, {r['calls']} generate calls): x{ratio:.2f}"
        )
        row = (
            f"| {datetime.date.today()} | {machine} | {os.getloadavg()[0]:.1f} | {name} "
            f"| {r['device']} | {args.requests} | {args.max_tokens} | {r['seq_s']:.2f} "
            f"| {r['conc_s']:.2f} | {r['seq_tps']:.1f} | {r['conc_tps']:.1f} | {ratio:.2f} "
            f"| {r['calls']} |\n"
        )
        if not args.no_write:
            if not RESULTS.exists():
                RESULTS.write_text(HEADER)
            with RESULTS.open("a") as f:
                f.write(row)


if __name__ == "__main__":
    main()
