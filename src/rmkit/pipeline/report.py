"""The ``report`` stage: before/after evaluation and training curves of a run in one place.

Reads two ``rmkit eval`` output folders of the same benchmark (``before`` and ``after``) and
any number of train stage folders; writes into its stage folder (and, with ``publish``, into
that folder too, e.g. the run folder):

- ``report.md``: accuracy before and after, the paired difference with its 95% bootstrap
  interval (:func:`rmkit.eval.compare.compare_runs`: items resampled with replacement, or,
  when the held-out items carry a ``cluster``, clusters resampled with replacement), the
  per-category table, the training stages' first/last metrics, sample verdicts, and the curves;
- ``accuracy.png`` (before/after bars with the interval) and ``curves-<stage>.png`` per train
  stage (:func:`rmkit.training.metrics.plot_curves` on its ``metrics.jsonl``);
- ``results.json``: ``accuracy_before``, ``accuracy_after``, ``n_heldout``, ``n_clusters``
  (resampled units; ``n_heldout`` for the item bootstrap), ``bootstrap`` (``"cluster"`` or
  ``"item"``), ``difference``, ``ci95_low``, ``ci95_high``, ``significant`` (the interval
  excludes 0) and per-stage numbers.

Nothing is generated or re-judged: the numbers come from the saved predictions, so the report
can be rebuilt at any time.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from rmkit.config.validate import StrictModel
from rmkit.errors import RmkitError
from rmkit.utils.io import iter_jsonl, read_json, write_json_atomic, write_text_atomic

RESULTS = "results.json"
REPORT = "report.md"


class ReportStageConfig(StrictModel):
    """Compare a judge before and after training; plot the training curves."""

    kind: Literal["report"] = "report"
    before: str = Field(description="eval output folder of the judge before training")
    after: str = Field(description="eval output folder of the trained judge")
    train: list[str] = Field(default_factory=list, description="train stage folders to plot")
    output: str = Field(description="set by the pipeline: the stage folder")
    publish: str | None = Field(None, description="also write report.md and figures here")
    title: str = "Before and after training"
    n_boot: int = Field(2000, ge=100, description="bootstrap resamples of the paired difference")
    seed: int = 0
    samples: int = Field(4, ge=0, description="example verdicts of the trained judge to show")
    figure_format: Literal["png"] = "png"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def train_summary(folder: Path) -> dict[str, Any]:
    """First and last logged values of the key metrics of one train stage folder."""
    rows = (
        [row for _, row in iter_jsonl(folder / "metrics.jsonl")]
        if (folder / "metrics.jsonl").is_file()
        else []
    )
    if not rows:
        raise RmkitError(
            f"{folder}: no metrics.jsonl", hint="report.train lists finished train stage folders"
        )
    rewards = [k for k in rows[0] if k.startswith("reward/") and k != "reward/total"]
    keys = ["loss", "reward/total", *rewards, "accuracy", "response/length", "eval/accuracy"]
    out: dict[str, Any] = {"steps": rows[-1].get("step"), "first": {}, "last": {}}
    for key in keys:
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if vals:
            out["first"][key], out["last"][key] = vals[0], vals[-1]
    seconds = [sum(v for k, v in r.items() if k.startswith("step_time/")) for r in rows]
    if any(seconds):
        out["seconds_per_step"] = sum(seconds) / len(seconds)
    return out


def accuracy_figure(path: Path, before: float, after: float, low: float, high: float) -> None:
    """Two bars (before, after) with the after bar's interval of the difference drawn on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    ax.bar(["before", "after"], [before, after], color=["#9aa5b1", "#2f7ed8"])
    ax.errorbar(
        [1], [after], yerr=[[after - (before + low)], [(before + high) - after]],
        fmt="none", ecolor="black", capsize=6,
    )  # fmt: skip
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy")
    ax.set_title("accuracy (error bar: 95% CI of the gain)", fontsize=9)
    for x, v in enumerate([before, after]):
        ax.text(x - 0.3, max(v - 0.07, 0.02), f"{100 * v:.1f}%", color="white", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    tmp.replace(path)


def sample_lines(after: Path, k: int) -> list[str]:
    """Markdown lines showing ``k`` predictions of the after run (id, verdict, right/wrong): the
    first ``ceil(k/2)`` right ones and the first wrong ones, in file order (fewer of one kind
    when the other runs short)."""
    if k <= 0 or not (after / "predictions.jsonl").is_file():
        return []
    right: list[tuple[int, str]] = []
    wrong: list[tuple[int, str]] = []
    for i, (_, p) in enumerate(iter_jsonl(after / "predictions.jsonl")):
        probs = p.get("probabilities")
        extra = f", p = {max(probs):.2f}" if probs else ""
        mark = "right" if p.get("correct") else "wrong"
        line = f"- `{p['id']}`: `{p.get('output', '').strip()[:120]}` ({mark}{extra})"
        (right if p.get("correct") else wrong).append((i, line))
    n_right = min(len(right), max(k - len(wrong), (k + 1) // 2))
    chosen = right[:n_right] + wrong[: k - n_right]
    return [line for _, line in sorted(chosen)]


def build_report(cfg: ReportStageConfig) -> dict[str, Any]:
    """Write the report files (module docstring); return ``results.json``'s content."""
    from rmkit.eval.compare import compare_runs
    from rmkit.training.metrics import plot_curves

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    cmp = compare_runs(cfg.before, cfg.after, n_boot=cfg.n_boot, seed=cfg.seed)
    rows = {name.strip(): (a, b) for name, a, b in cmp["rows"]}
    acc_before, acc_after = rows["overall"]
    low, high = cmp["ci"]
    figures = ["accuracy.png"]
    accuracy_figure(out / "accuracy.png", acc_before, acc_after, low, high)
    stages: dict[str, Any] = {}
    for folder in map(Path, cfg.train):
        stages[folder.name] = train_summary(folder)
        png = plot_curves(folder / "metrics.jsonl", out / f"curves-{folder.name}.png")
        if png is not None:
            figures.append(png.name)
    results = {
        "benchmark": cmp["benchmark"],
        "protocol": cmp["protocol"],
        "accuracy_before": acc_before,
        "accuracy_after": acc_after,
        "n_heldout": cmp["n_common"],
        "n_clusters": cmp["n_clusters"],
        "bootstrap": cmp["bootstrap"],
        "difference": cmp["mean_diff"],
        "ci95_low": low,
        "ci95_high": high,
        "significant": low > 0 or high < 0,
        "n_boot": cmp["n_boot"],
        "judge_before": cmp["model_a"],
        "judge_after": cmp["model_b"],
        "train": stages,
    }
    text = render_markdown(cfg, cmp, results, figures)
    write_json_atomic(out / RESULTS, results)
    write_text_atomic(out / REPORT, text)
    if cfg.publish:
        dest = Path(cfg.publish)
        dest.mkdir(parents=True, exist_ok=True)
        for name in figures:
            shutil.copyfile(out / name, dest / name)
        write_text_atomic(dest / REPORT, text)
    return results


def render_markdown(
    cfg: ReportStageConfig, cmp: dict[str, Any], res: dict[str, Any], figures: list[str]
) -> str:
    from rmkit.eval.compare import bootstrap_phrase

    low, high = res["ci95_low"], res["ci95_high"]
    clusters = f" in {res['n_clusters']} clusters" if res.get("bootstrap") == "cluster" else ""
    verdict = (
        "The gain is larger than its 95% confidence interval's distance from zero."
        if low > 0
        else "The interval includes zero: no reliable gain."
        if high >= 0
        else "Accuracy fell."
    )
    lines = [
        f"# {cfg.title}",
        "",
        f"Benchmark `{res['benchmark']}`, protocol `{res['protocol']}`, "
        f"{res['n_heldout']} held-out items{clusters} judged by both.",
        "",
        "| | accuracy |",
        "| --- | --- |",
        f"| before ({res['judge_before']}) | {pct(res['accuracy_before'])} |",
        f"| after ({res['judge_after']}) | {pct(res['accuracy_after'])} |",
        f"| difference | {100 * res['difference']:+.1f} points |",
        f"| 95% CI of the difference (paired {bootstrap_phrase(res)}, {res['n_boot']} "
        "resamples) | "
        f"[{100 * low:+.1f}, {100 * high:+.1f}] points |",
        "",
        verdict,
        "",
        "## Details",
        "",
        "| metric | before | after |",
        "| --- | --- | --- |",
    ]
    for name, a, b in cmp["rows"]:
        if name == "n scored":
            lines.append(f"| {name} | {a} | {b} |")
        else:
            lines.append(f"| {name.strip()} | {pct(a)} | {pct(b)} |")
    if res["train"]:
        lines += ["", "## Training", "", "| stage | steps | metric | first | last |"]
        lines.append("| --- | --- | --- | --- | --- |")
        for stage, s in res["train"].items():
            for key in s["last"]:
                lines.append(
                    f"| {stage} | {s['steps']} | {key} | {s['first'][key]:.4g} | "
                    f"{s['last'][key]:.4g} |"
                )
    samples = sample_lines(Path(cfg.after), cfg.samples)
    if samples:
        lines += ["", "## Sample verdicts after training", "", *samples]
    lines += ["", "## Figures", ""]
    lines += [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def read_results(folder: Path) -> dict[str, Any]:
    return read_json(folder / RESULTS)
