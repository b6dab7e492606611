"""What the LoRA layers cost in a SmolLM2-135M forward / forward+backward pass on the CPU.

A batch shaped like the RL step's training pass (8 sequences x ``--seq`` tokens): the plain
model vs LoRA r16 all-linear with adapters in fp32 (PEFT's default, what rmkit and TRL use), in
the base dtype, or fp32 adapters run as one matmul with the weight sum (``merged_forward``), for
bf16 and fp32 weights; then the top operators of the bf16 + fp32-adapter
forward (torch.profiler, self CPU time).

    .venv/bin/python bench/experiments/train_lora_overhead.py [--threads 1] [--seq 320]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))


def merged_forward(self, x, *args, **kwargs):
    """A LoRA linear run as one matmul with ``W + scale * B @ A`` (the sum built under autograd
    each call, cast to W's dtype): no activation-sized casts, adds or scalings, at the price of
    a full weight-gradient matmul in the backward."""
    import torch.nn.functional as F

    base = self.get_base_layer()
    delta = sum(
        (self.lora_B[a].weight @ self.lora_A[a].weight) * self.scaling[a]
        for a in self.active_adapters
    )
    return F.linear(x, base.weight + delta.to(base.weight.dtype), base.bias)


def build(dtype: str, lora: str):
    """``lora``: none | fp32 (adapters upcast, PEFT's default) | base (adapters in ``dtype``) |
    merged (fp32 adapters, forward through :func:`merged_forward`)."""
    from peft import LoraConfig, get_peft_model

    from rmkit.models.loading import load_model

    model = load_model("smollm2-135m", dtype=dtype).model
    if lora != "none":
        cfg = LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
            task_type="CAUSAL_LM",
        )  # fmt: skip
        model = get_peft_model(model, cfg, autocast_adapter_dtype=lora != "base")
    if lora == "merged":
        import types

        from peft.tuners.lora import Linear

        for module in model.modules():
            if isinstance(module, Linear):
                module.forward = types.MethodType(merged_forward, module)
    return model.train()


def best(fn, reps: int) -> float:
    fn()
    out = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=320)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("RMKIT_NO_PROGRESS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(args.threads)
    print(f"{torch.get_num_threads()} thread(s), load {os.getloadavg()[0]:.1f}", flush=True)
    ids = torch.randint(100, 1000, (args.batch, args.seq))
    for dtype in ("bfloat16", "float32"):
        for lora in ("none", "fp32", "base", "merged"):
            if dtype == "float32" and lora == "base":
                continue
            model = build(dtype, lora)

            def fwd(model=model):
                with torch.no_grad():
                    model(input_ids=ids, logits_to_keep=128)

            def fwd_bwd(model=model):
                out = model(input_ids=ids, logits_to_keep=128)
                out.logits.float().logsumexp(-1).mean().backward()
                model.zero_grad(set_to_none=True)

            f = best(fwd, args.reps)
            fb = best(fwd_bwd, args.reps) if lora != "none" else float("nan")
            print(
                f"{dtype:9s} LoRA {lora:6s}: forward {f:6.2f} s, forward+backward {fb:6.2f} s "
                f"(load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
            if dtype == "bfloat16" and lora == "fp32":
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    fwd_bwd()
                table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14)
            del model
    print("\nop profile, bf16 weights + fp32 adapters, forward+backward:\n" + table)


if __name__ == "__main__":
    main()
