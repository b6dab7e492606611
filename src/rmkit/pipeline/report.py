"""The ``report`` stage: before/after evaluation and training curves of a run in one place.

Reads two ``rmkit eval`` output folders of the same benchmark (``before`` and ``after``),
optionally a third one between them (``sft``: the judge after its SFT stage, when ``after`` is
the judge after RL), and any number of train stage folders; writes into its stage folder (and,
with ``publish``, into that folder too, e.g. the run folder):

- ``report.md``: accuracy before and after, the paired difference with its 95% bootstrap
  interval (:func:`rmkit.eval.compare.compare_runs`: items resampled with replacement, or,
  when the held-out items carry a ``cluster``, clusters resampled with replacement), the
  per-category table, the training stages' first/last/mean metrics, sample verdicts, and the
  curves; with ``sft``, a stage-by-stage table (untrained -> after SFT -> after RL, over the
  items all three runs scored: each run's accuracy with its own bootstrap interval, each
  stage's gain over the run before it with its paired interval and whether that interval
  excludes zero, :func:`rmkit.eval.compare.compare_stages`) and the verdicts RL changed;
- ``accuracy.png`` (before/after bars with the interval of the gain; with ``sft`` three bars,
  each with its own interval) and ``curves-<stage>.png`` per train stage
  (:func:`rmkit.training.metrics.plot_curves` on its ``metrics.jsonl``);
- ``results.json``: ``accuracy_before``, ``accuracy_after``, ``n_heldout``, ``n_clusters``
  (resampled units; ``n_heldout`` for the item bootstrap), ``bootstrap`` (``"cluster"`` or
  ``"item"``), ``difference``, ``ci95_low``, ``ci95_high``, ``significant`` (the interval
  excludes 0), per-stage numbers (``train``), ``rl_zero_variance_groups`` (the mean over its
  steps of ``rl/zero_variance_groups`` of the last train stage that logged it), and with
  ``sft``: ``accuracy_sft``, ``sft_gain``, ``sft_gain_ci95_low``/``high``,
  ``sft_gain_significant``, ``rl_gain``, ``rl_gain_ci95_low``/``high``,
  ``rl_gain_significant``, ``verdicts_changed_sft_to_rl`` and the full table (``stagewise``).

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
ZERO_VARIANCE = "rl/zero_variance_groups"  # RL metric: share of groups with equal rewards
STAGE_LABELS = ("untrained", "after SFT", "after RL")


class ReportStageConfig(StrictModel):
    """Compare a judge before and after training; plot the training curves."""

    kind: Literal["report"] = "report"
    before: str = Field(description="eval output folder of the judge before training")
    after: str = Field(description="eval output folder of the trained judge")
    sft: str | None = Field(
        None,
        description="eval output folder of the judge after SFT, before RL (then `after` is the "
        "judge after RL): adds the stage-by-stage accounting untrained -> SFT -> RL",
    )
    transfer: list[str] = Field(
        default_factory=list,
        description="eval output folders, in training order (untrained, [after SFT,] trained), of "
        "a held-out set unlike the training data (e.g. an unseen relation family): reported as "
        "its own stage-by-stage table and transfer_* keys",
    )
    split_name: str = Field(
        "heldout",
        pattern=r"^[a-z][a-z0-9_]*$",
        description="name of the held-out split scored: results also carry n_<name> and "
        "n_<name>_clusters",
    )
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
    keys.append(ZERO_VARIANCE)
    out: dict[str, Any] = {"steps": rows[-1].get("step"), "first": {}, "last": {}, "mean": {}}
    for key in keys:
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if vals:
            out["first"][key], out["last"][key] = vals[0], vals[-1]
            out["mean"][key] = sum(vals) / len(vals)
    seconds = [sum(v for k, v in r.items() if k.startswith("step_time/")) for r in rows]
    if any(seconds):
        out["seconds_per_step"] = sum(seconds) / len(seconds)
    return out


def bar_figure(
    path: Path,
    labels: list[str],
    accs: list[float],
    errors: dict[int, tuple[float, float]],
    title: str,
) -> None:
    """Accuracy bars (one per label) with a 95% interval ``(low, high)`` drawn on the bars named
    in ``errors``; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(labels) + 0.8, 3.2))
    ax.bar(labels, accs, color=["#9aa5b1", *["#7fb3e8"] * (len(labels) - 2), "#2f7ed8"])
    xs = sorted(errors)
    ax.errorbar(
        xs, [accs[x] for x in xs],
        yerr=[[accs[x] - errors[x][0] for x in xs], [errors[x][1] - accs[x] for x in xs]],
        fmt="none", ecolor="black", capsize=6,
    )  # fmt: skip
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title, fontsize=9)
    for x, v in enumerate(accs):
        ax.text(x - 0.3, max(v - 0.07, 0.02), f"{100 * v:.1f}%", color="white", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    tmp.replace(path)


def stage_table(dirs: list[str], n_boot: int, seed: int) -> dict[str, Any]:
    """The stage-by-stage table of eval runs in training order (untrained, [after SFT,] trained):
    each run's accuracy with its interval, each gain over the run before with its paired one."""
    from rmkit.eval.compare import compare_stages

    st = compare_stages(dirs, n_boot=n_boot, seed=seed)
    labels = STAGE_LABELS if len(dirs) == 3 else ("untrained", "trained")
    return {
        "n_items": st["n_common"],
        "n_clusters": st["n_clusters"],
        "bootstrap": st["bootstrap"],
        "rows": [
            {"stage": label, "judge": r["model"], "accuracy": r["accuracy"],
             "overall": r["overall"], "ci95_low": r["ci"][0], "ci95_high": r["ci"][1],
             "gain": None if j == 0 else st["gains"][j - 1]["mean_diff"],
             "gain_ci95_low": None if j == 0 else st["gains"][j - 1]["ci"][0],
             "gain_ci95_high": None if j == 0 else st["gains"][j - 1]["ci"][1]}
            for j, (label, r) in enumerate(zip(labels, st["runs"], strict=True))
        ],
        "changes": st["changes"],
    }  # fmt: skip


def gain_keys(prefix: str, row: dict[str, Any]) -> dict[str, Any]:
    """``<prefix>``, ``<prefix>_ci95_low/high`` and ``<prefix>_significant`` of a table row."""
    low, high = row["gain_ci95_low"], row["gain_ci95_high"]
    return {
        prefix: row["gain"],
        f"{prefix}_ci95_low": low,
        f"{prefix}_ci95_high": high,
        f"{prefix}_significant": low > 0 or high < 0,
    }


def stagewise_results(cfg: ReportStageConfig) -> dict[str, Any] | None:
    """The stage-by-stage accounting of before -> sft -> after (None without ``cfg.sft``):
    the flat ``results.json`` keys and the table (``stagewise``)."""
    if not cfg.sft:
        return None
    table = stage_table([cfg.before, cfg.sft, cfg.after], cfg.n_boot, cfg.seed)
    table["verdicts_sft_to_rl"] = table["changes"][1]
    sft = table["rows"][1]
    bounds = {
        f"accuracy_{name}_ci95_{end}": row[f"ci95_{end}"]
        for name, row in zip(("before", "sft", "after"), table["rows"], strict=True)
        for end in ("low", "high")
    }
    return {
        "accuracy_sft": sft["overall"] if sft["overall"] is not None else sft["accuracy"],
        **bounds,
        **gain_keys("sft_gain", sft),
        **gain_keys("rl_gain", table["rows"][2]),
        "verdicts_changed_sft_to_rl": table["changes"][1]["fraction"],
        "stagewise": table,
    }


def transfer_results(cfg: ReportStageConfig) -> dict[str, Any] | None:
    """The transfer row (``cfg.transfer``: eval runs of a held-out set unlike the training data,
    in training order): ``transfer_accuracy_<stage>``, each stage's gain, and the table."""
    if not cfg.transfer:
        return None
    table = stage_table(cfg.transfer, cfg.n_boot, cfg.seed)
    names = ("before", "sft", "after") if len(cfg.transfer) == 3 else ("before", "after")
    out: dict[str, Any] = {
        f"transfer_accuracy_{n}": r["accuracy"] for n, r in zip(names, table["rows"], strict=True)
    }
    out["n_transfer"], out["n_transfer_clusters"] = table["n_items"], table["n_clusters"]
    gains = ("sft_gain", "rl_gain") if len(cfg.transfer) == 3 else ("gain",)
    for key, row in zip(gains, table["rows"][1:], strict=True):
        out.update(gain_keys(f"transfer_{key}", row))
    out["transfer"] = table
    return out


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
    staged = stagewise_results(cfg)
    transfer = transfer_results(cfg)
    figures = ["accuracy.png"]
    if staged is None:
        bar_figure(
            out / "accuracy.png", ["before", "after"], [acc_before, acc_after],
            {1: (acc_before + low, acc_before + high)}, "accuracy (error bar: 95% CI of the gain)",
        )  # fmt: skip
    else:
        st = staged["stagewise"]["rows"]
        bar_figure(
            out / "accuracy.png", [r["stage"] for r in st], [r["accuracy"] for r in st],
            {j: (r["ci95_low"], r["ci95_high"]) for j, r in enumerate(st)},
            "accuracy by stage (error bars: 95% CI)",
        )  # fmt: skip
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
    if cfg.split_name != "heldout":
        results[f"n_{cfg.split_name}"] = cmp["n_common"]
        results[f"n_{cfg.split_name}_clusters"] = cmp["n_clusters"]
    zero_var = [s["mean"][ZERO_VARIANCE] for s in stages.values() if ZERO_VARIANCE in s["mean"]]
    if zero_var:
        results["rl_zero_variance_groups"] = zero_var[-1]
    if staged is not None:
        results.update(staged)
    if transfer is not None:
        results.update(transfer)
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
        *stagewise_lines(res),
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
        lines += ["", "## Training", "", "| stage | steps | metric | first | last | mean |"]
        lines.append("| --- | --- | --- | --- | --- | --- |")
        for stage, s in res["train"].items():
            means = s.get("mean", {})
            for key in s["last"]:
                mean = f"{means[key]:.4g}" if key in means else "-"
                lines.append(
                    f"| {stage} | {s['steps']} | {key} | {s['first'][key]:.4g} | "
                    f"{s['last'][key]:.4g} | {mean} |"
                )
        if res.get("rl_zero_variance_groups") is not None:
            lines += [
                "",
                f"RL: on average {pct(res['rl_zero_variance_groups'])} of a step's prompt groups "
                f"had equal rewards for all their completions (`{ZERO_VARIANCE}`, mean over the "
                "steps): those groups give no group advantage.",
            ]
    samples = sample_lines(Path(cfg.after), cfg.samples)
    if samples:
        lines += ["", "## Sample verdicts after training", "", *samples]
    lines += ["", "## Figures", ""]
    lines += [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def gain_phrase(low: float, high: float) -> str:
    """Whether a gain's 95% interval excludes zero, in words."""
    if low > 0:
        return "yes: a gain"
    if high < 0:
        return "yes: a loss"
    return "no"


def table_lines(st: dict[str, Any], n_boot: int, what: str) -> list[str]:
    """A stage table (:func:`stage_table`) as markdown: one row per run, each gain's paired
    interval and whether it excludes zero."""
    from rmkit.eval.compare import bootstrap_phrase

    clusters = f" in {st['n_clusters']} clusters" if st["bootstrap"] == "cluster" else ""
    lines = [
        f"{st['n_items']} {what}{clusters} judged by {'all three' if len(st['rows']) == 3 else 'both'}. A gain is over the "
        f"row above. 95% intervals: {bootstrap_phrase(st)}, {n_boot} resamples, of each "
        "accuracy and (paired) of each gain.",
        "",
        "| stage | judge | accuracy | 95% CI | gain | 95% CI of the gain | excludes 0 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in st["rows"]:
        ci = f"[{pct(r['ci95_low'])}, {pct(r['ci95_high'])}]"
        if r["gain"] is None:
            gain = gain_ci = excl = "-"
        else:
            gain = f"{100 * r['gain']:+.1f} points"
            gain_ci = f"[{100 * r['gain_ci95_low']:+.1f}, {100 * r['gain_ci95_high']:+.1f}]"
            excl = gain_phrase(r["gain_ci95_low"], r["gain_ci95_high"])
        lines.append(
            f"| {r['stage']} | {r['judge']} | {pct(r['accuracy'])} | {ci} | {gain} | "
            f"{gain_ci} | {excl} |"
        )
    return lines


def stagewise_lines(res: dict[str, Any]) -> list[str]:
    """The stage-by-stage section of report.md (none without a ``stagewise`` table), and the
    transfer section when there is one."""
    lines: list[str] = []
    st = res.get("stagewise")
    if st:
        lines += ["", "## Stage by stage", ""]
        lines += table_lines(st, res["n_boot"], "held-out items")
        lines.append("")
        for name, key in (("SFT", "sft_gain"), ("RL", "rl_gain")):
            low, high = res[f"{key}_ci95_low"], res[f"{key}_ci95_high"]
            lines.append(
                f"- {name}: {100 * res[key]:+.1f} points, 95% CI "
                f"[{100 * low:+.1f}, {100 * high:+.1f}]: "
                + (
                    "the interval excludes zero, a reliable gain."
                    if low > 0
                    else "the interval excludes zero, a reliable loss."
                    if high < 0
                    else "the interval includes zero, no reliable change."
                )
            )
        ch = st["verdicts_sft_to_rl"]
        if ch["n"]:
            lines.append(
                f"- RL changed the verdict on {ch['changed']} of {ch['n']} items "
                f"({pct(ch['fraction'])}): {ch['fixed']} now right, {ch['broken']} now wrong."
            )
    tr = res.get("transfer")
    if tr:
        lines += ["", "## Transfer", ""]
        lines += table_lines(tr, res["n_boot"], "items of a held-out set unlike the training data")
    return lines


def read_results(folder: Path) -> dict[str, Any]:
    return read_json(folder / RESULTS)
