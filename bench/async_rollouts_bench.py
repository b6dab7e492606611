"""Synchronous vs asynchronous rollouts (``rl.rollout.max_staleness: 1``) on the quickstart.

The quickstart's GRPO stage (``recipes/quickstart.yaml``: SmolLM2-135M-Instruct in bf16, LoRA
r16, 4 prompts x 8 completions of <= 40 tokens, temperature 0.8, from the SFT cold start) runs
twice from the same SFT adapter: synchronously (generation, then training, each on both cores)
and with ``max_staleness: 1`` (the local engine's generator process on one core, the trainer on
the other, overlapping). Each run is followed by the quickstart's dev evaluation (200
pairs, likelihood verdicts after a greedy think block).

Reported: mean step time over the steps after the first (the first also starts the generator
and fills the pipeline), completions per hour, the speed-up, the held-out accuracies with the
paired-bootstrap 95% CI of their difference (``rmkit eval compare``), and the reward curves of
both runs side by side (``bench/results/async_reward_curves.png``). Optionally TRL 1.16's
``GRPOTrainer`` on the same model and batch (``--trl-python``).

    python bench/async_rollouts_bench.py [--work runs/async-bench] [--steps 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "quickstart.yaml"
RESULTS = ROOT / "bench" / "results" / "async_rollouts.md"
CURVES = ROOT / "bench" / "results" / "async_reward_curves.png"
BIN = Path(sys.executable).parent


def rmkit_run(out: Path, *args: str) -> None:
    # scored on the dev split: the final split is read only by the recipe's own runs
    cmd = [str(BIN / "rmkit"), "run", str(RECIPE), "--output", str(out), "vars.split=dev", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "RMKIT_NO_PROGRESS": "1"})


def rows(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "rl" / "metrics.jsonl").read_text().splitlines()]


def summarise(folder: Path, per_step: int) -> dict:
    r = rows(folder)
    timed = r[1:]
    step = sum(x["step_time/total"] for x in timed) / len(timed)
    return {
        "steps": len(r),
        "step_s": step,
        "first_s": r[0]["step_time/total"],
        "rollout_s": sum(x["step_time/rollout"] for x in timed) / len(timed),
        "per_hour": per_step * 3600 / step,
        "reward": [x["reward/total"] for x in r],
        "accuracy": [x.get("accuracy") for x in r],
        "staleness": sorted({x.get("rollout/staleness", 0.0) for x in r}),
        "heldout": json.loads((folder / "summary.json").read_text()).get("accuracy_after"),
    }


def plot(sync: dict, asyn: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for ax, (name, s) in zip(axes, [("synchronous", sync), ("max_staleness 1", asyn)], strict=True):
        steps = range(1, len(s["reward"]) + 1)
        ax.plot(steps, s["reward"], marker="o", label="reward/total")
        ax.plot(steps, s["accuracy"], marker=".", label="batch accuracy")
        ax.set_title(f"{name}: {s['step_s']:.1f} s/step")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def trl_step(python: str, model_dir: Path, prompts: int, steps: int) -> float | None:
    """Mean step time of TRL's GRPOTrainer on ``prompts`` prompts x 8 completions of <= 40
    tokens, bf16 weights (None when the TRL interpreter is missing)."""
    if not Path(python).exists():
        print(f"no TRL interpreter at {python}: skipping TRL", flush=True)
        return None
    from rmkit.prompts import get_template, render_judge_messages

    template = get_template(str(ROOT / "examples" / "quickstart" / "judge.jinja"))
    records = [json.loads(x) for x in (ROOT / "examples" / "quickstart" / "train.jsonl").open()][
        :prompts
    ]
    convs = [render_judge_messages(_record(r), [0, 1], template) for r in records]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(convs, fh)
    cmd = [
        python, str(ROOT / "bench" / "trl_grpo_bench.py"), "--model", str(model_dir),
        "--prompt-json", fh.name, "--steps", str(steps + 1), "--completions", "8",
        "--prompts", str(prompts), "--max-new-tokens", "40", "--dtype", "bfloat16",
        "--temperature", "0.8",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    timed = res["step_s"][1:]
    return sum(timed) / len(timed)


def _record(row: dict) -> dict:
    """A quickstart source row (prompt, chosen, rejected) as a unified record."""
    return {
        "id": row["id"], "task": "text", "prompt": row["prompt"], "images": [],
        "candidates": [row["chosen"], row["rejected"]], "label": 0,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "async-bench")
    ap.add_argument("--steps", type=int, default=10, help="GRPO steps per run")
    ap.add_argument(
        "--base", type=Path, default=None,
        help="a quickstart run folder whose stages up to sft are done (default: WORK/base, "
        "made here); stage outputs are keyed by the folder, so it is used in place",
    )  # fmt: skip
    ap.add_argument("--trl-python", default="/tmp/rmkit-trl-venv/bin/python")
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args()
    base = args.base or args.work / "base"
    if not (base / "sft" / "final").is_dir():
        rmkit_run(base, "--until", "sft")
    runs = {}
    for name, extra in [("sync", []), ("async", ["stages.rl.rl.rollout.max_staleness=1"])]:
        folder = args.work / name
        if not (folder / "summary.json").is_file():
            # the same run folder (stage outputs are keyed by it), from the rl stage on
            rmkit_run(
                base,
                "--from",
                "rl",
                "--until",
                "eval-after",
                f"stages.rl.max_steps={args.steps}",
                *extra,
            )
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for part in ("rl", "eval-after", "summary.json"):
                src = base / part
                (shutil.copytree if src.is_dir() else shutil.copyfile)(src, folder / part)
        runs[name] = summarise(folder, 4 * 8)
    from rmkit.eval.compare import compare_runs

    cmp = compare_runs(args.work / "sync" / "eval-after", args.work / "async" / "eval-after")
    low, high = cmp["ci"]
    sync, asyn = runs["sync"], runs["async"]
    plot(sync, asyn, CURVES)
    from rmkit.models.registry import resolve_model

    trl = trl_step(args.trl_python, resolve_model("smollm2-135m"), 4, 3)
    speedup = asyn["per_hour"] / sync["per_hour"]
    lines = [
        "# Synchronous vs asynchronous rollouts (quickstart GRPO)",
        "",
        f"Run {dt.datetime.now():%Y-%m-%d %H:%M} on {platform.node()} ({os.cpu_count()} CPUs), "
        f"`python bench/async_rollouts_bench.py --steps {args.steps}`: the quickstart's GRPO "
        "stage (SmolLM2-135M-Instruct bf16, LoRA r16, 4 prompts x 8 completions of <= 40 "
        "tokens) from the same SFT adapter, then its held-out evaluation (200 pairs).",
        "",
        "| run | mean step (s, steps 2..) | first step (s) | rollout wait (s) | completions / hour "
        "| staleness | held-out accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in [("synchronous", sync), ("max_staleness: 1", asyn)]:
        lines.append(
            f"| {name} | {s['step_s']:.2f} | {s['first_s']:.2f} | {s['rollout_s']:.2f} | "
            f"{s['per_hour']:.0f} | {s['staleness']} | {s['heldout']:.3f} |"
        )
    lines += [
        "",
        f"Speed-up in completions per hour: **{speedup:.2f}x**. Held-out accuracy difference "
        f"(async - sync): {100 * cmp['mean_diff']:+.1f} points, paired-bootstrap 95% CI "
        f"[{100 * low:+.1f}, {100 * high:+.1f}] over {cmp['n_common']} pairs.",
    ]
    if trl is not None:
        lines.append(
            f"TRL 1.16 GRPOTrainer, same model, 4 prompts x 8 completions of <= 40 tokens, bf16 "
            f"weights, 2 threads: {trl:.2f} s/step; rmkit asynchronous / TRL = "
            f"**{asyn['step_s'] / trl:.2f}**, rmkit synchronous / TRL = {sync['step_s'] / trl:.2f}."
        )
    lines += ["", f"Reward curves: `{CURVES.relative_to(ROOT)}`.", ""]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    previous = args.output.read_text() if args.output.exists() else ""
    args.output.write_text("\n".join(lines) + ("\n" + previous if previous else ""))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
