"""1 vs 2 torch threads for a bf16 decode step of SmolLM2-135M (batch 8, 270 cached tokens),
alternating, to see how a shared 2-core machine treats each. Run it twice, with and without
``OMP_WAIT_POLICY=PASSIVE`` in the environment (must be set before torch is imported).

    .venv/bin/python bench/experiments/train_threads_probe.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("RMKIT_NO_PROGRESS", "1")
    import torch
    from transformers import DynamicCache

    from rmkit.models.loading import load_model

    model = load_model("smollm2-135m", dtype="bfloat16").model.eval()
    wait = os.environ.get("OMP_WAIT_POLICY", "default")
    print(f"OMP_WAIT_POLICY={wait}, load {os.getloadavg()[0]:.1f}", flush=True)
    for rnd in range(args.rounds):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                cache = DynamicCache(config=model.config)
                model(input_ids=torch.randint(100, 1000, (8, 270)), past_key_values=cache)
                ts = []
                for _ in range(args.reps):
                    t, c0 = time.perf_counter(), time.process_time()
                    model(input_ids=torch.randint(100, 1000, (8, 1)), past_key_values=cache)
                    ts.append((time.perf_counter() - t, time.process_time() - c0))
            ts.sort()
            med = ts[len(ts) // 2]
            print(
                f"round {rnd} threads {threads}: decode step median {1000 * med[0]:.0f} ms wall, "
                f"{1000 * med[1]:.0f} ms CPU (min {1000 * ts[0][0]:.0f} ms), "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
