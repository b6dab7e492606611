"""Human-readable views of ``metrics.json``: the Markdown report, the PNG chart, the terminal table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STAT_ROWS = (
    ("n loaded", "n_loaded"),
    ("n judged", "n_judged"),
    ("n scored (headline)", "n_scored"),
    ("samples judged", "n_samples"),
    ("unparsable samples", "n_unparsable"),
    ("parse-failure rate", "parse_failure_rate"),
    ("picked-first rate", "picked_first_rate"),
    ("position consistency", "position_consistency"),
    ("order pairs compared", "n_order_pairs"),
    ("vote ties broken", "n_vote_ties"),
)


def pct(x: Any) -> str:
    """An accuracy in [0, 1] as a percentage with one decimal (``-`` for missing)."""
    return "-" if x is None else f"{100 * float(x):.1f}"


def _stat(x: Any, key: str) -> str:
    if x is None:
        return "-"
    if key.endswith(("rate", "consistency")):
        return pct(x) + "%"
    return str(x)


def protocol_columns(metrics: dict[str, Any]) -> list[str]:
    """Category names over all protocols, in first-seen order."""
    cols: list[str] = []
    for proto in metrics["protocols"].values():
        for cat in proto.get("categories", {}):
            if cat not in cols:
                cols.append(cat)
    return cols


def protocol_rows(
    metrics: dict[str, Any], mark: str = " (headline)"
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the protocols table (accuracies in percent); ``mark`` tags the
    headline protocol."""
    cats = protocol_columns(metrics)
    has_macro = any("macro" in p for p in metrics["protocols"].values())
    header = ["protocol", "n", "overall"] + (["macro"] if has_macro else []) + cats
    rows = []
    for name, proto in metrics["protocols"].items():
        label = name + (mark if name == metrics["protocol"] else "")
        row = [label, str(proto.get("n", "-")), pct(proto.get("overall"))]
        if has_macro:
            row.append(pct(proto.get("macro")))
        row += [pct(proto.get("categories", {}).get(c)) for c in cats]
        rows.append(row)
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(metrics: dict[str, Any], chart_name: str | None) -> str:
    s = metrics.get("sampling") or {}
    run = [
        ["model", str(metrics.get("model"))],
        ["template", str(metrics.get("template"))],
        ["headline protocol", str(metrics["protocol"])],
        ["split / subset", f"{metrics.get('split')} / {metrics.get('subset')}"],
        ["order control", f"{metrics.get('orders')} (seed {metrics.get('seed')})"],
        ["votes per order", str(metrics.get("votes"))],
        [
            "sampling",
            f"temperature {s.get('temperature')}, top-p {s.get('top_p')}, "
            f"top-k {s.get('top_k') or 'off'}, repetition penalty {s.get('repetition_penalty', 1.0)}, "
            f"max {s.get('max_new_tokens')} new tokens",
        ],
    ]
    parts = [f"# rmkit eval: {metrics['benchmark']}", "", _md_table(["run", ""], run), ""]
    head = f"**overall {pct(metrics.get('overall'))}%**"
    if metrics.get("macro") is not None:
        head += f", macro {pct(metrics['macro'])}%"
    parts += [f"Headline ({metrics['protocol']}): {head} on n = {metrics.get('n')} items.", ""]
    parts += ["## Protocols (accuracy, %)", "", _md_table(*protocol_rows(metrics)), ""]
    subs = [
        (name, proto["subcategories"])
        for name, proto in metrics["protocols"].items()
        if proto.get("subcategories")
    ]
    if subs:
        names = sorted({k for _, d in subs for k in d})
        header = ["subcategory"] + [n for n, _ in subs]
        rows = [[k] + [pct(d.get(k)) for _, d in subs] for k in names]
        parts += ["## Subcategories (accuracy, %)", "", _md_table(header, rows), ""]
    stats = [[label, _stat(metrics.get(key), key)] for label, key in STAT_ROWS]
    parts += ["## Position control and parsing", "", _md_table(["", ""], stats), ""]
    if metrics.get("skipped_rows"):
        parts += [
            "Rows not turned into items: "
            + ", ".join(f"{v} ({k})" for k, v in metrics["skipped_rows"].items()),
            "",
        ]
    if metrics.get("notes"):
        parts += ["## Notes", ""] + [f"- {n}" for n in metrics["notes"]] + [""]
    if chart_name:
        parts += [f"![{metrics['benchmark']}]({chart_name})", ""]
    return "\n".join(parts)


def write_chart(metrics: dict[str, Any], path: Path) -> Path | None:
    """A grouped bar chart: overall and per-category accuracy for every protocol (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protos = list(metrics["protocols"].items())
    if not protos:
        return None
    has_macro = any("macro" in p for _, p in protos)
    cats = ["overall"] + (["macro"] if has_macro else []) + protocol_columns(metrics)
    width = 0.8 / len(protos)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cats) + 2), 4.2), dpi=100)
    for k, (name, proto) in enumerate(protos):
        vals = [
            proto.get(c) if c in ("overall", "macro") else proto.get("categories", {}).get(c)
            for c in cats
        ]
        xs = [i + (k - (len(protos) - 1) / 2) * width for i in range(len(cats))]
        ax.bar(xs, [100 * v if v is not None else 0.0 for v in vals], width, label=name)
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels([c.replace("/", "/\n") for c in cats], fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{metrics['benchmark']} - {metrics.get('model')}", fontsize=10)
    ax.axhline(50, color="grey", linewidth=0.8, linestyle="--")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".rmkit-tmp-" + path.name)
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


def metrics_table(metrics: dict[str, Any]) -> Any:
    """A rich Table of the protocols, for the terminal."""
    from rich.table import Table

    header, rows = protocol_rows(metrics, mark=" *")
    title = f"{metrics['benchmark']}: {metrics.get('model')} (n loaded {metrics.get('n_loaded')})"
    table = Table(
        title=title,
        title_justify="left",
        caption="* headline protocol; accuracies in %",
        caption_justify="left",
    )
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    return table


def stats_line(metrics: dict[str, Any]) -> str:
    keys = ("parse_failure_rate", "picked_first_rate", "position_consistency")
    return "  ".join(f"{k.replace('_', ' ')}: {_stat(metrics.get(k), k)}" for k in keys)
