"""RL step time by rollout engine: local, rmkit serve, vLLM (CPU), on the same GRPO config.

The config is the train bench's: SmolLM2-135M-Instruct (float32), LoRA r16 on every linear
layer, 1 prompt x 8 completions of at most 128 tokens at temperature 1, no KL. Each engine runs
its own short RL run (``prepare_rl`` + ``rl_step``: the real loop) for one warm-up step and
``--steps`` timed steps, one engine after the other (a server and a local rollout would fight
for the same two cores). Servers are launched by rmkit, as a recipe's ``launch`` block does.

Per step it records the wall time of the phases (sync = adapter save + load on the server,
rollout, the rest = scoring, log-probs, advantages, update) and, for the server engines, the
server's own generation time: right after each rollout the same request (same adapter, seed and
sampling settings; for vLLM a fresh ``cache_salt`` so it cannot reuse the prompt the rollout
cached) is sent again straight to the server, and its wall time taken (vLLM's own metrics
cannot time one request of n > 1 samples: it runs them as n child requests). rmkit
serve also reports its model time in a ``Server-Timing`` header, shown beside it. The engine's
overhead is ``rollout wall - bare request + sync``.

    python bench/rollout_engine_bench.py --steps 3      # writes bench/results/rollout_engines.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT / "src"), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)
RESULTS = ROOT / "bench" / "results" / "rollout_engines.md"
PREFS = ROOT / "examples" / "tiny" / "prefs.jsonl"

ENGINES = [
    ("local (in-process, LoRA folded)", {"engine": "local"}),
    (
        "server: rmkit serve (launched)",
        {"engine": "server", "server": {"launch": {"kind": "rmkit"}}},
    ),
    (
        "server: vLLM 0.32 CPU (launched)",
        {
            "engine": "server",
            "server": {
                "launch": {
                    "kind": "vllm",
                    "max_model_len": 2048,
                    "env": {"VLLM_CPU_KVCACHE_SPACE": "2"},
                }
            },
        },
    ),
    (
        "local, max_staleness 1 (generator process, 1 thread each)",
        {"engine": "local", "max_staleness": 1},
    ),
]


def config(n: int, max_new: int, rollout: dict, prompts: int = 1):
    from rmkit.config.kinds import load_config

    out = Path(tempfile.mkdtemp(prefix="rmkit-engine-bench-"))
    base = {
        "kind": "train", "stage": "rl", "model": {"spec": "smollm2-135m", "dtype": "float32"},
        "weights": {"mode": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
        "data": {"path": str(PREFS)},
        "batch": {"prompts_per_step": prompts, "completions_per_prompt": n, "micro_batch_per_device": n},
        "rl": {"algorithm": "grpo", "max_new_tokens": max_new, "temperature": 1.0,
               "kl": {"mode": "none"}, "rollout": rollout},
        "rewards": {"preset": "unified-think"}, "optim": {"lr": 1e-5, "scheduler": "constant"},
        "max_steps": 1000, "seed": 0, "output": str(out),
        "checkpoint": {"every_steps": None},
        "logging": {"samples_every_steps": None, "tensorboard": False, "plot": False},
    }  # fmt: skip
    return load_config(None, [], kind="train", base=base)


def bare_request_s(backend, conv, params, salt: bool) -> float:
    """Wall time of the same request sent straight to the server (no engine around it).

    ``salt``: a fresh vLLM ``cache_salt``, so the re-sent prompt does not hit the prefix cache
    the rollout filled (its own n samples still share their prompt, as in the rollout).
    """
    import uuid

    import httpx
    import orjson

    body = backend.request_body(conv, params, 0)
    if salt:
        body["cache_salt"] = uuid.uuid4().hex
    t = time.perf_counter()
    r = httpx.post(backend.base_url + "/chat/completions", content=orjson.dumps(body),
                   timeout=600, headers={"Content-Type": "application/json"})  # fmt: skip
    r.raise_for_status()
    return time.perf_counter() - t


def run_engine(
    name: str, rollout: dict, steps: int, n: int, max_new: int, prompts: int = 1
) -> list[dict]:
    import torch

    from rmkit.training.rl import prepare_rl, rl_step

    threads = torch.get_num_threads()
    run = prepare_rl(config(n, max_new, rollout, prompts))
    engine = run.engine
    rows = []
    try:
        server = rollout["engine"] == "server"
        if server:  # remember each rollout's request, to send it again bare after the step
            backend, generate, last = engine.backend, engine.backend.generate, {}

            def remembering_generate(convs, params):
                last.update(convs=convs, params=params)
                return generate(convs, params)

            backend.generate = remembering_generate
        salt = rollout.get("server", {}).get("launch", {}).get("kind") == "vllm"
        for step in range(steps + 1):
            metrics, _ = rl_step(run)
            run.step += 1
            if server:
                metrics["bare_s"] = sum(
                    bare_request_s(backend, c, last["params"], salt) for c in last["convs"]
                )
            if step:
                rows.append(metrics)
            print(f"{name} step {step}: {metrics['step_time/total']:.2f}s", flush=True)
    finally:
        run.reward_fn.close()
        engine.close()
        torch.set_num_threads(threads)  # an asynchronous local run lent a thread to its generator
    return rows


def summarise(rows: list[dict]) -> dict:
    mean = lambda k: sum(r.get(k, 0.0) for r in rows) / len(rows)  # noqa: E731
    step, rollout, sync = mean("step_time/total"), mean("step_time/rollout"), mean("step_time/sync")
    server = mean("bare_s") if "bare_s" in rows[0] else None
    timing = mean("rollout/server_gen_s") if rows[0].get("rollout/server_gen_s") else None
    overhead = (rollout - server + sync) if server is not None else None
    return {
        "step": step, "sync": sync, "rollout": rollout, "server": server, "timing": timing,
        "train": step - rollout - sync, "overhead": overhead,
        "overhead_frac": overhead / step if overhead is not None else None,
        "gap_max": max((r["rollout/logprob_gap_max"] for r in rows if "rollout/logprob_gap_max" in r), default=None),
    }  # fmt: skip


def fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--completions", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=1, help="prompts per step")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--engines", default="0,1,2", help="indices into ENGINES")
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args()
    os.environ.setdefault("RMKIT_NO_PROGRESS", "1")
    results = []
    for i in (int(x) for x in args.engines.split(",")):
        name, rollout = ENGINES[i]
        rows = run_engine(
            name, rollout, args.steps, args.completions, args.max_new_tokens, args.prompts
        )
        results.append((name, summarise(rows)))
    lines = [
        "# RL step time by rollout engine",
        "",
        f"Run {dt.datetime.now():%Y-%m-%d %H:%M} on {platform.node()} ({os.cpu_count()} CPUs), "
        f"`python bench/rollout_engine_bench.py --steps {args.steps}`. SmolLM2-135M-Instruct "
        f"fp32, LoRA r16 all-linear, GRPO, {args.prompts} prompt(s) x {args.completions} completions of <= "
        f"{args.max_new_tokens} tokens, temperature 1; mean of {args.steps} steps after one "
        "warm-up step. Seconds per step. Servers are started by rmkit (launch block).",
        "",
        "| engine | step | sync | rollout (wall) | same request sent bare | server-timing gen "
        "| training (rest) | engine overhead | overhead / step | max logprob gap |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in results:
        frac = fmt(100 * s["overhead_frac"], ".1f") + "%" if s["overhead_frac"] is not None else "-"
        lines.append(
            f"| {name} | {fmt(s['step'])} | {fmt(s['sync'], '.3f')} | {fmt(s['rollout'])} "
            f"| {fmt(s['server'])} | {fmt(s['timing'])} | {fmt(s['train'])} "
            f"| {fmt(s['overhead'], '.3f')} | {frac} "
            f"| {fmt(s['gap_max'], '.1e')} |"
        )
    lines += [
        "",
        "The server's own generation time is measured by sending the rollout's request again, "
        "straight to the server (same adapter, seed and sampling settings), right after the "
        "rollout; rmkit serve also reports its model time in a `Server-Timing` header "
        "(server-timing gen). Engine overhead = rollout wall time - that bare request's time + "
        "sync (adapter save + load). Max logprob gap: the largest |trainer log-prob - behaviour log-prob the "
        "server returned| over the timed steps' tokens.",
        "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    previous = args.output.read_text() if args.output.exists() else ""
    args.output.write_text("\n".join(lines) + ("\n" + previous if previous else ""))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
