"""Benchmark: the RL step of ``rmkit train`` on SmolLM2-135M, and TRL's GRPOTrainer beside it.

Settings (TRL's usual GRPO example scale): one judge prompt per step, 8 completions of at most
128 new tokens, temperature 1, LoRA r=16 / alpha 32 on all linear layers, no KL, one update per
rollout batch, no gradient checkpointing. Everything runs in one process, one after the other:

1. **peak**: the best of 5 fp32 (and bf16) 2048x2048x2048 matmuls, the MFU denominator;
2. **rollout** (where generation time goes): 8 completions generated one at a time (n=1, eight
   calls) versus all together in one batched call with the KV cache, with the LoRA layers as
   they are or folded into the weights for generation, in fp32 and under bf16 autocast;
   prefill vs decode split, and a bare decode forward step for comparison;
3. **rmkit RL step**: the real loop (``prepare_rl`` + ``rl_step`` of ``rmkit.training.rl``,
   config validated like a recipe) for several variants, stepped in turn (one warm-up round,
   then N timed rounds) so load changes on a shared machine hit every variant alike;
4. **TRL**: ``bench/trl_grpo_bench.py`` in a separate environment with TRL installed
   (``--trl-python``; default ``/tmp/rmkit-trl-venv/bin/python``), same model folder, prompt,
   settings and torch thread count, four ways: fp32, bf16 autocast (TRL's default), model loaded
   in bf16 (``model_init_kwargs``; rmkit's "bf16 weights"), and bf16 weights + autocast; its
   step split into ``generate``, the rest of the rollout phase, and training. Skipped (and said
   so) when that interpreter is missing.

Every row runs under the OpenMP wait policy the ``rmkit`` command would choose (OpenMP's default
busy-waiting, or ``PASSIVE`` if other processes keep the cores busy at start; an exported
``OMP_WAIT_POLICY`` wins); the section header records it.

Model FLOPs: generation 2·N per token (N = non-embedding parameters; the output head counts
for generated tokens), training pass with LoRA 4·N per sequence token (forward + input
gradients; frozen weights get no weight gradient) plus the head on completion tokens. MFU =
model FLOP/s / measured matmul peak of the same dtype. Appends a section to
``bench/results/train.md``. The machine may be shared: compare ratios measured in one run.

    .venv/bin/python bench/train_bench.py [--steps 2] [--threads 2] [--skip-trl] [--trl-python PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "src")):
    if p not in sys.path:
        sys.path.insert(0, p)
RESULTS = ROOT / "bench" / "results" / "train.md"
PREFS = ROOT / "examples" / "tiny" / "prefs.jsonl"
DEFAULT_TRL = "/tmp/rmkit-trl-venv/bin/python"


# (name, model dtype, RL overrides); MFU is against the matmul peak of the model dtype
GENERATE = {"rollout": {"decoder": "generate"}}
RMKIT_VARIANTS = [
    (
        "rmkit, fp32, LoRA layers in rollout, prompt re-run per completion, HF generate",
        "float32",
        {"shared_prompts": False, "rollout": {"merge_lora": False, "decoder": "generate"}},
    ),
    ("rmkit, fp32, HF generate", "float32", GENERATE),
    ("rmkit, fp32", "float32", {}),
    ("rmkit, fp32 + bf16 rollouts", "float32", {"rollout": {"dtype": "bfloat16"}}),
    ("rmkit, bf16 weights, HF generate", "bfloat16", GENERATE),
    ("rmkit, bf16 weights", "bfloat16", {}),
]


def matmul_peak(dtype, n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of an n^3 matmul in ``dtype``."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def model_sizes(model) -> tuple[int, int]:
    """(non-embedding parameters, output-head parameters) of a causal LM."""
    head = model.get_output_embeddings().weight.numel()
    emb = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    return total - emb, head


def rollout_variants(loaded, conv, n: int, max_new: int) -> list[dict]:
    """Sequential vs batched generation, fp32 vs a bf16 weight copy (same seed)."""
    import torch

    from rmkit.generation.base import SamplingParams
    from rmkit.generation.hf import HFBackend
    from rmkit.training.model import merged_lora

    out = []
    for name, batched, dtype, merge, decoder in [
        ("one at a time, fp32, HF generate", False, None, False, "generate"),
        ("batched, fp32, HF generate", True, None, False, "generate"),
        ("batched, fp32, LoRA folded in, HF generate", True, None, True, "generate"),
        ("batched, fp32, LoRA folded in, shared-prompt decoder", True, None, True, "auto"),
        ("batched, bf16 copy, LoRA folded in, HF generate", True, torch.bfloat16, True, "generate"),
        ("batched, bf16 copy, LoRA folded in, shared-prompt decoder", True, torch.bfloat16, True,
         "auto"),
    ]:  # fmt: skip
        backend = HFBackend(loaded, batch_size=n, decoder=decoder)
        t = time.perf_counter()
        with merged_lora(loaded.model, merge, dtype), torch.no_grad():
            if batched:
                res = backend.generate([conv], SamplingParams(n=n, max_new_tokens=max_new, seed=0))
            else:
                res = [
                    backend.generate([conv], SamplingParams(n=1, max_new_tokens=max_new, seed=k))[0]
                    for k in range(n)
                ]
        secs = time.perf_counter() - t
        st = backend.stats
        out.append({
            "variant": name, "seconds": secs, "tokens": st["generated_tokens"],
            "prompt_tokens": st["prompt_tokens"], "prefill_s": st["prefill_s"],
            "decode_s": st["decode_s"], "completions": sum(len(r) for r in res),
        })  # fmt: skip
        print(f"rollout {name}: {secs:.1f}s, {st['generated_tokens']} tokens", flush=True)
    return out


def bare_decode_step(loaded, context: int, batch: int, reps: int = 5) -> float:
    """Seconds of one forward step of ``batch`` tokens with a KV cache of ``context`` tokens."""
    import torch

    model = loaded.model
    ids = torch.randint(100, 1000, (batch, context))
    with torch.no_grad():
        pkv = model(input_ids=ids, use_cache=True).past_key_values
        t = time.perf_counter()
        for _ in range(reps):
            nxt = torch.randint(100, 1000, (batch, 1))
            pkv = model(input_ids=nxt, past_key_values=pkv, use_cache=True).past_key_values
    return (time.perf_counter() - t) / reps


def rmkit_config(record_file: Path, n: int, max_new: int, dtype: str, rl: dict):
    """The RL recipe of the benchmark as a validated TrainConfig."""
    from rmkit.config.kinds import load_config

    out = Path(tempfile.mkdtemp(prefix="rmkit-train-bench-"))
    base = {
        "kind": "train", "stage": "rl", "model": {"spec": "smollm2-135m", "dtype": dtype},
        "weights": {"mode": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
        "data": {"path": str(record_file)},
        "batch": {"prompts_per_step": 1, "completions_per_prompt": n, "micro_batch_per_device": n},
        "rl": {"algorithm": "grpo", "max_new_tokens": max_new, "temperature": 1.0,
               "kl": {"mode": "none"}, **rl},
        "rewards": {"preset": "unified-think"}, "optim": {"lr": 1e-5, "scheduler": "constant"},
        "max_steps": 1000, "seed": 0, "output": str(out),
        "checkpoint": {"every_steps": None},
        "logging": {"samples_every_steps": None, "tensorboard": False, "plot": False},
    }  # fmt: skip
    return load_config(None, [], kind="train", base=base)


def rmkit_interleaved(record_file: Path, steps: int, n: int, max_new: int) -> dict[str, list]:
    """Every variant's real RL loop (``prepare_rl`` + ``rl_step``), stepped in turn: one
    warm-up round, then ``steps`` timed rounds, so machine-load changes hit all alike."""
    from rmkit.training.rl import prepare_rl, rl_step

    runs = {
        name: prepare_rl(rmkit_config(record_file, n, max_new, dtype, rl))
        for name, dtype, rl in RMKIT_VARIANTS
    }
    rows: dict[str, list] = {name: [] for name in runs}
    for round_ in range(steps + 1):
        for name, run in runs.items():
            metrics, _ = rl_step(run)
            run.step += 1
            if round_:
                rows[name].append(metrics)
            print(f"round {round_} {name}: {metrics['step_time/total']:.1f}s", flush=True)
    return rows


def summarise_rmkit(
    rows: list[dict], sizes: tuple[int, int], peak: float, n: int, shared: bool
) -> dict:
    """Mean phase times and throughputs. ``train tok/s`` counts the step's sequence tokens
    (prompt x completions + completion tokens); MFU counts the FLOPs actually run, i.e. the
    one prompt pass per micro-batch when prompts are shared."""
    body, head = sizes
    timed = rows
    mean = lambda k: sum(r[k] for r in timed) / len(timed)  # noqa: E731
    gen_tokens = mean("response/length") * n
    seq_tokens = mean("tokens_per_s") * mean("step_time/total")
    train_s = mean("step_time/backward")
    prompt_tokens = (seq_tokens - gen_tokens) / n
    run_tokens = prompt_tokens + gen_tokens if shared else seq_tokens
    train_flops = 4 * body * run_tokens + 4 * head * gen_tokens
    return {
        "step_s": mean("step_time/total"), "rollout_s": mean("step_time/rollout"),
        "prefill_s": mean("rollout/prefill_s"), "decode_s": mean("rollout/decode_s"),
        "scoring_s": mean("step_time/scoring"), "logprobs_s": mean("step_time/logprobs"),
        "train_s": train_s, "gen_tokens": gen_tokens, "seq_tokens": seq_tokens,
        "rollout_tok_s": gen_tokens / mean("step_time/rollout"),
        "train_tok_s": seq_tokens / train_s,
        "train_mfu": train_flops / train_s / (peak * 1e9),
    }  # fmt: skip


# (name, model dtype, bf16 autocast); TRL's own defaults: float32 weights, bf16 autocast on
TRL_VARIANTS = [
    ("TRL GRPOTrainer, fp32", "float32", False),
    ("TRL GRPOTrainer, bf16 autocast (TRL default)", "float32", True),
    ("TRL GRPOTrainer, bf16 weights", "bfloat16", False),
    ("TRL GRPOTrainer, bf16 weights + bf16 autocast", "bfloat16", True),
]


def run_trl(
    python: str, model_dir: Path, conv, steps: int, n: int, max_new: int, threads: int,
    dtype: str, autocast: bool,
) -> dict | None:  # fmt: skip
    if not Path(python).exists():
        print(f"TRL interpreter {python} not found: skipping TRL", flush=True)
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(conv, fh)
    cmd = [
        python, str(ROOT / "bench" / "trl_grpo_bench.py"), "--model", str(model_dir),
        "--prompt-json", fh.name, "--steps", str(steps + 1), "--completions", str(n),
        "--max-new-tokens", str(max_new), "--threads", str(threads), "--dtype", dtype,
    ] + (["--bf16"] if autocast else [])  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"TRL run failed:\n{proc.stderr[-2000:]}", flush=True)
        return None
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"TRL {dtype} autocast={autocast}: steps {[round(x, 1) for x in res['step_s']]} "
        f"({res['threads']} threads, params {res['model_param_dtype']}, "
        f"{time.perf_counter() - t:.0f}s in all)",
        flush=True,
    )
    return res


def summarise_trl(res: dict, sizes: tuple[int, int], peak: float) -> dict:
    """Mean over the timed steps (the first is a warm-up), in the rmkit columns: rollout =
    ``model.generate``; scoring = the rest of TRL's rollout phase (rewards, advantages);
    train = the rest of the step (loss forward/backward, optimizer). TRL runs the prompt once
    per completion, so the training FLOPs count every sequence token."""
    body, head = sizes
    k = 1 if len(res["step_s"]) > 1 else 0
    mean = lambda key: sum(res[key][k:]) / len(res[key][k:])  # noqa: E731
    step, gen, prep = mean("step_s"), mean("generate_s"), mean("prepare_s")
    gen_tokens, prompt_tokens = mean("completion_tokens"), mean("prompt_tokens")
    seq_tokens = gen_tokens + prompt_tokens
    train_s = step - prep
    return {
        "step_s": step, "rollout_s": gen, "prefill_s": None, "decode_s": None,
        "scoring_s": prep - gen, "logprobs_s": None, "train_s": train_s,
        "gen_tokens": gen_tokens, "seq_tokens": seq_tokens, "rollout_tok_s": gen_tokens / gen,
        "train_tok_s": seq_tokens / train_s,
        "train_mfu": (4 * body * seq_tokens + 4 * head * gen_tokens) / train_s / (peak * 1e9),
        "threads": res["threads"], "trl": res["trl"],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up step)")
    ap.add_argument("--completions", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for every row, TRL's too (0: torch's default)",
    )
    ap.add_argument("--trl-python", default=DEFAULT_TRL)
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--skip-rollout", action="store_true")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to results")
    args = ap.parse_args()
    os.environ.setdefault("RMKIT_NO_PROGRESS", "1")
    # The wait policy the rmkit command would choose (PASSIVE only if other processes keep the
    # cores busy at start; see rmkit.cli.main.omp_wait_policy), set before torch loads OpenMP
    # and inherited by the TRL subprocess, so every row runs alike.
    from rmkit.cli.main import set_omp_wait_policy

    set_omp_wait_policy()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    from rmkit.data.records import load_records, write_records
    from rmkit.models.loading import load_model
    from rmkit.models.lora import LoraSettings, apply_lora
    from rmkit.prompts import render_judge_messages

    load0 = os.getloadavg()[0]
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    print(
        f"peak fp32 {peak32:.1f} GFLOP/s, bf16 {peak16:.1f} GFLOP/s ({threads} threads)", flush=True
    )
    record = load_records(PREFS)[0]
    conv = render_judge_messages(record, [0, 1], "default")
    work = Path(tempfile.mkdtemp(prefix="rmkit-bench-data-"))
    write_records(work / "one.jsonl", [record])
    loaded = load_model("smollm2-135m")
    sizes = model_sizes(loaded.model)
    loaded.model = apply_lora(loaded.model, LoraSettings(r=16, alpha=32, dropout=0.0)).eval()
    n, T = args.completions, args.max_new_tokens
    rollouts = [] if args.skip_rollout else rollout_variants(loaded, conv, n, T)
    bare = None
    if not args.skip_rollout:
        from rmkit.training.model import merged_lora

        plain = bare_decode_step(loaded, 400, n)
        with merged_lora(loaded.model):
            bare = (plain, bare_decode_step(loaded, 400, n))
    rows = rmkit_interleaved(work / "one.jsonl", args.steps, n, T)
    runs = {
        name: summarise_rmkit(
            rows[name],
            sizes,
            peak16 if dtype == "bfloat16" else peak32,
            n,
            rl.get("shared_prompts", True),
        )  # fmt: skip
        for name, dtype, rl in RMKIT_VARIANTS
    }
    trl: dict[str, dict | None] = {}
    for name, dtype, autocast in [] if args.skip_trl else TRL_VARIANTS:
        res = run_trl(
            args.trl_python, loaded.path, conv, args.steps, n, T, threads, dtype, autocast
        )
        peak = peak16 if autocast or dtype == "bfloat16" else peak32
        trl[name] = summarise_trl(res, sizes, peak) if res else None
    report = render(
        args, threads, (peak32, peak16), sizes, rollouts, bare, runs, trl,
        (load0, os.getloadavg()[0]),
    )  # fmt: skip
    print(report)
    if args.no_record:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a", encoding="utf-8") as fh:
        if RESULTS.stat().st_size == 0:
            fh.write(
                "# rmkit train: RL step benchmark (SmolLM2-135M)\n\n"
                + __doc__.split("\n\n", 1)[1].split("    .venv")[0]
            )
        fh.write(report)


def _cell(x, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def render(args, threads, peaks, sizes, rollouts, bare, runs, trl, loads) -> str:
    body, head = sizes
    n, T = args.completions, args.max_new_tokens
    lines = [
        f"\n## {datetime.datetime.now():%Y-%m-%d %H:%M} — {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {threads} thread(s) in every row "
        f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}), load avg {loads[0]:.1f} → {loads[1]:.1f}\n",
        f"Matmul peak (2048³): fp32 {peaks[0]:.1f} GFLOP/s, bf16 {peaks[1]:.1f} GFLOP/s. "
        f"Model: {body / 1e6:.1f}M non-embedding + {head / 1e6:.1f}M head parameters. "
        f"{n} completions × ≤{T} tokens, 1 prompt/step, LoRA r16 all-linear "
        f"(adapters fp32 in every row, PEFT's default). Means over {args.steps} timed step(s) "
        "after one warm-up step.\n",
    ]
    if rollouts:
        lines += ["\n### Rollout (generation only)\n",
                  "| variant | s | generated tokens | tokens/s | prefill s | decode s | decode ms/step |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in rollouts:
            steps = T if r["completions"] == n and "batched" in r["variant"] else T * n
            lines.append(
                f"| {r['variant']} | {r['seconds']:.1f} | {r['tokens']} | {r['tokens'] / r['seconds']:.1f} "
                f"| {r['prefill_s']:.1f} | {r['decode_s']:.1f} | {1000 * r['decode_s'] / steps:.0f} |"
            )
        lines.append(
            f"\nA bare decode forward step (batch {n}, 400 cached tokens, fp32) takes "
            f"{1000 * bare[0]:.0f} ms with the LoRA layers, {1000 * bare[1]:.0f} ms merged.\n"
        )
    lines += ["\n### RL step\n",
              "| run | step s | generated tokens | rollout s (prefill / decode) | scoring s | logprobs s | train s | rollout tok/s | train tok/s | train MFU |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    named = dict(runs)
    for name, t in trl.items():
        if t is None:
            lines.append(f"| {name} | not run | | | | | | | | |")
            continue
        named[name] = t
    for name, r in named.items():
        split = (
            f" ({r['prefill_s']:.1f} / {r['decode_s']:.1f})" if r["prefill_s"] is not None else ""
        )
        label = f"{name} (TRL {r['trl']})" if "trl" in r else name
        lines.append(
            f"| {label} | {r['step_s']:.1f} | {r['gen_tokens']:.0f} | {r['rollout_s']:.1f}{split} "
            f"| {r['scoring_s']:.2f} | {_cell(r['logprobs_s'], '.2f')} | {r['train_s']:.1f} "
            f"| {r['rollout_tok_s']:.1f} | {r['train_tok_s']:.0f} | {100 * r['train_mfu']:.1f}% |"
        )
    if trl:
        lines.append(
            "\nTRL rows: rollout = `model.generate`, scoring = the rest of TRL's rollout phase "
            "(rewards, advantages), no separate log-prob pass (one update per batch), train = the "
            "rest of the step; MFU against the bf16 peak when autocast or bf16 weights.\n"
        )
    ratios = []

    def ratio(a: str, b: str, label: str) -> None:
        if a in named and b in named:
            ratios.append(f"{label} = {named[a]['step_s'] / named[b]['step_s']:.2f}")

    ratio("rmkit, fp32", "TRL GRPOTrainer, fp32", "rmkit fp32 / TRL fp32")
    ratio(
        "rmkit, bf16 weights",
        "TRL GRPOTrainer, bf16 weights",
        "rmkit bf16 weights / TRL bf16 weights",
    )
    ratio("rmkit, bf16 weights", "TRL GRPOTrainer, bf16 weights + bf16 autocast",
          "rmkit bf16 weights / TRL bf16 weights + autocast")  # fmt: skip
    ratio("rmkit, fp32 + bf16 rollouts", "TRL GRPOTrainer, bf16 autocast (TRL default)",
          "rmkit fp32 + bf16 rollouts / TRL bf16 autocast")  # fmt: skip
    trl_named = {k: v for k, v in named.items() if k.startswith("TRL")}
    if trl_named and runs:
        best_r = min(runs, key=lambda k: runs[k]["step_s"])
        best_t = min(trl_named, key=lambda k: trl_named[k]["step_s"])
        ratios.append(
            f"fastest rmkit ({best_r}) / fastest TRL ({best_t}) = "
            f"{runs[best_r]['step_s'] / trl_named[best_t]['step_s']:.2f}"
        )
    if ratios:
        lines.append("\nStep-time ratios (same run): " + "; ".join(ratios) + ".")
    lines.append("\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
