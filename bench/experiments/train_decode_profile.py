"""Where an rmkit rollout decode step goes on the CPU, and what makes it faster (SmolLM2-135M).

Measures, one idea at a time, in one process (compare ratios; the machine may be shared):

- **bare step**: one decode forward of a batch of 8 with a KV cache of ``--context`` tokens
  (the rollout's prompt + half its completions), for weights fp32 / bf16 / fp32 under bf16
  autocast, SDPA vs eager attention, dynamic vs static KV cache, 1 vs 2 torch threads, and
  with LoRA layers vs folded in (what ``rl.rollout.merge_lora`` does);
- **generate loop**: ``model.generate`` per-step time (sampling, 8 x ``--new`` tokens, no early
  stop) with rmkit's HFBackend settings vs a bare ``generate`` vs a hand-written loop that only
  runs forward + sampling, i.e. the per-step Python overhead of ``generate`` itself;
- **op profile**: the top operators of a bf16 decode step (torch.profiler, self CPU time);
- **roofline**: FLOPs and bytes of weights read per step against the measured matmul peak.

    .venv/bin/python bench/experiments/train_decode_profile.py [--threads 1] [--context 270]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))


def timed_min(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def load(dtype: str, attn: str = "sdpa", lora: bool = False):
    from rmkit.models.loading import load_model
    from rmkit.models.lora import LoraSettings, apply_lora

    loaded = load_model("smollm2-135m", dtype=dtype)
    loaded.model.config._attn_implementation = attn
    loaded.model.set_attn_implementation(attn)
    if lora:
        loaded.model = apply_lora(loaded.model, LoraSettings(r=16, alpha=32, dropout=0.0))
    loaded.model.eval()
    return loaded


def decode_step(model, batch: int, context: int, static: bool, autocast: bool, reps: int):
    """Seconds of the best of ``reps`` single-token forward steps on a ``context``-token cache."""
    import torch
    from transformers import DynamicCache, StaticCache

    ids = torch.randint(100, 1000, (batch, context))
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    with torch.inference_mode(), ctx:
        if static:
            cache = StaticCache(config=model.config, max_cache_len=context + reps + 2)
        else:
            cache = DynamicCache(config=model.config)
        model(input_ids=ids, past_key_values=cache, use_cache=True)
        pos = [context]

        def step():
            nxt = torch.randint(100, 1000, (batch, 1))
            cp = torch.tensor([pos[0]])
            model(input_ids=nxt, past_key_values=cache, use_cache=True, cache_position=cp)
            pos[0] += 1

        return timed_min(step, reps)


def generate_per_step(loaded, batch: int, context: int, new: int, mode: str) -> float:
    """ms per generated position: ``mode`` rmkit (HFBackend.generate_detailed with the RL
    settings: sampling, per-token log-probs) | rmkit-static (the same with
    ``cache_implementation="static"``) | hf (bare model.generate, sampling; ``new`` tokens minus
    1 token, so the prefill cancels) | loop (forward + multinomial sampling by hand)."""
    import torch

    from rmkit.generation.base import SamplingParams
    from rmkit.generation.hf import HFBackend

    model = loaded.model
    ids = torch.randint(100, 1000, (batch, context))
    mask = torch.ones_like(ids)
    if mode.startswith("rmkit"):
        backend = HFBackend(loaded, batch_size=batch)
        backend.stop_ids = [-1]  # no early stop: every row decodes ``new`` tokens
        if mode == "rmkit-static":
            plain_config = backend._generation_config

            def static_config(params):
                cfg = plain_config(params)
                cfg.cache_implementation = "static"
                return cfg

            backend._generation_config = static_config
        conv = [{"role": "user", "content": "word " * (context - 20)}]
        params = SamplingParams(n=batch, max_new_tokens=new, seed=0, logprobs=True)
        backend.generate_detailed([conv], params)
        return 1000 * backend.stats["decode_s"] / (new - 1)
    with torch.inference_mode():
        if mode == "hf":

            def gen(k: int) -> float:
                t = time.perf_counter()
                model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=k, min_new_tokens=k,
                    do_sample=True, top_k=0, top_p=1.0, temperature=1.0, pad_token_id=0,
                )  # fmt: skip
                return time.perf_counter() - t

            return 1000 * (gen(new) - gen(1)) / (new - 1)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        t = time.perf_counter()
        pkv = out.past_key_values
        logits = out.logits[:, -1]
        for _ in range(new):
            nxt = torch.multinomial(torch.softmax(logits.float(), -1), 1)
            out = model(input_ids=nxt, past_key_values=pkv, use_cache=True)
            pkv, logits = out.past_key_values, out.logits[:, -1]
        return 1000 * (time.perf_counter() - t) / new


def op_profile(model, batch: int, context: int, top: int = 15) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import DynamicCache

    ids = torch.randint(100, 1000, (batch, context))
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, past_key_values=cache, use_cache=True)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                model(
                    input_ids=torch.randint(100, 1000, (batch, 1)),
                    past_key_values=cache,
                    use_cache=True,
                )
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=270, help="cached tokens at the timed step")
    ap.add_argument("--new", type=int, default=32, help="tokens per generate-loop measurement")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--skip-profile", action="store_true")
    args = ap.parse_args()
    import os

    os.environ.setdefault("RMKIT_NO_PROGRESS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_threads_probe.py
    import torch

    torch.set_num_threads(args.threads)
    b, c, r = args.batch, args.context, args.reps
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, load {os.getloadavg()[0]:.1f}"
    )
    n = 2048
    for dt in (torch.float32, torch.bfloat16):
        x, y = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
        best = timed_min(lambda x=x, y=y: x @ y, 3)
        print(f"matmul peak {dt}: {2 * n**3 / best / 1e9:.0f} GFLOP/s")

    rows: list[tuple[str, float]] = []

    def row(name: str, secs: float) -> None:
        rows.append((name, secs))
        print(f"{name:58s} {1000 * secs:7.1f} ms", flush=True)

    print(f"\nbare decode step, batch {b}, {c} cached tokens (best of {r})")
    fp32 = load("float32")
    bf16 = load("bfloat16")
    for name, m, auto in (("fp32", fp32, False), ("bf16 weights", bf16, False),
                          ("fp32 + bf16 autocast", fp32, True)):  # fmt: skip
        row(f"{name}, sdpa, dynamic cache", decode_step(m.model, b, c, False, auto, r))
    row("bf16 weights, sdpa, static cache", decode_step(bf16.model, b, c, True, False, r))
    row("fp32, sdpa, static cache", decode_step(fp32.model, b, c, True, False, r))
    for name, m in (("fp32", fp32), ("bf16 weights", bf16)):
        m.model.set_attn_implementation("eager")
        row(f"{name}, eager attention", decode_step(m.model, b, c, False, False, r))
        m.model.set_attn_implementation("sdpa")
    other = 1 if args.threads != 1 else 2
    torch.set_num_threads(other)
    row(f"bf16 weights, {other} thread(s)", decode_step(bf16.model, b, c, False, False, r))
    row(f"fp32, {other} thread(s)", decode_step(fp32.model, b, c, False, False, r))
    torch.set_num_threads(args.threads)
    row("bf16 weights, batch 1", decode_step(bf16.model, 1, c, False, False, r))
    row("bf16 weights, batch 16", decode_step(bf16.model, 16, c, False, False, r))
    lora16 = load("bfloat16", lora=True)
    row("bf16 weights, LoRA layers (not folded)", decode_step(lora16.model, b, c, False, False, r))
    del lora16

    print(
        f"\ngenerate loop, batch {b}, {c}-token prompt, {args.new} new tokens (ms per token step)"
    )
    for name, m in (("bf16 weights", bf16), ("fp32", fp32)):
        for mode in ("rmkit", "rmkit-static", "hf", "loop"):
            ms = generate_per_step(m, b, c, args.new, mode)
            print(f"{name + ', ' + mode:58s} {ms:7.1f} ms", flush=True)

    body = sum(p.numel() for p in bf16.model.parameters())
    print(
        f"\nroofline: {body / 1e6:.0f}M parameters read per step "
        f"({2 * body / 1e6:.0f} MB bf16, {4 * body / 1e6:.0f} MB fp32), "
        f"{2 * body * b / 1e9:.2f} GFLOP per batch-{b} step"
    )
    if not args.skip_profile:
        print("\nop profile, bf16 weights decode step (5 steps):")
        print(op_profile(bf16.model, b, c))
        print("\nop profile, fp32 decode step (5 steps):")
        print(op_profile(fp32.model, b, c))


if __name__ == "__main__":
    main()
