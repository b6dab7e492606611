"""Probe: does ``torch.compile`` (static KV cache) speed up rollout decoding on the CPU?

SmolLM2-135M with LoRA r16 folded into a bf16 weight copy (what ``rl.rollout.dtype: bfloat16``
does), one judge prompt x 8 sampled completions of exactly ``--new`` tokens (no early stop).
Rows: HF ``generate`` as rmkit runs it (dynamic cache, eager); static cache, eager; static
cache + inductor-compiled forward (first call includes compilation; later calls reuse it,
including for a prompt of another length).

    .venv/bin/python bench/experiments/train_compile_probe.py [--new 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", default="default")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--dtype", default="float32", help="weights as loaded (float32, bfloat16)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from transformers import CompileConfig

    from rmkit.models.chat import prepare_inputs
    from rmkit.models.loading import load_model
    from rmkit.models.lora import LoraSettings, apply_lora
    from rmkit.prompts import render_judge_messages
    from rmkit.training.model import merged_lora

    loaded = load_model("smollm2-135m", dtype=args.dtype)
    loaded.model = apply_lora(loaded.model, LoraSettings(r=16, alpha=32, dropout=0.0)).eval()
    rec = {"id": "x", "prompt": "What is the capital of Peru?", "task": "text",
           "candidates": ["The capital of Peru is Lima.", "The capital of Peru is Oslo."]}  # fmt: skip
    convs = [render_judge_messages(rec, [0, 1], "default")]
    rec2 = dict(rec, prompt="Quick question: what is the capital city of the country Peru?")
    convs2 = [render_judge_messages(rec2, [1, 0], "default")]
    model = loaded.model

    def run(conv, **kw):
        inputs = prepare_inputs(loaded, conv * 8)
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **inputs, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                max_new_tokens=args.new, min_new_tokens=args.new, pad_token_id=0, **kw,
            )  # fmt: skip
        s = time.perf_counter() - t
        return s, out.shape[1] - inputs["input_ids"].shape[1]

    from rmkit.generation.base import SamplingParams
    from rmkit.generation.hf import HFBackend

    with merged_lora(model, True, torch.bfloat16 if args.dtype == "float32" else None):
        backend = HFBackend(loaded, batch_size=8)
        for _ in range(2):
            t = time.perf_counter()
            res = backend.generate(convs, SamplingParams(n=8, max_new_tokens=args.new, seed=0))
            s = time.perf_counter() - t
            n = max(len(c.token_ids) for c in res[0])
            print(f"rmkit HFBackend.generate: {s:.1f}s for {n} steps = {1000 * s / n:.0f} ms/step "
                  f"(prefill {backend.stats['prefill_s']:.1f}s)", flush=True)  # fmt: skip
        if args.skip_compile:
            return
        for name, kw in [
            ("dynamic cache, eager", {}),
            ("static cache, eager", {"cache_implementation": "static"}),
        ]:
            s, n = run(convs, **kw)
            print(f"{name}: {s:.1f}s for {n} steps = {1000 * s / n:.0f} ms/step", flush=True)
        cc = CompileConfig(mode=args.mode, fullgraph=False, dynamic=None)
        cc._compile_all_devices = True
        for label, conv in [("first call", convs), ("second call", convs), ("new prompt", convs2),
                            ("new prompt again", convs2)]:  # fmt: skip
            s, n = run(conv, cache_implementation="static", compile_config=cc)
            print(f"static cache, compiled ({label}): {s:.1f}s for {n} steps = "
                  f"{1000 * s / n:.0f} ms/step", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
