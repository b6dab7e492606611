"""Probe: how often does a judge, mid-think, prefer to restate the true reply over the false one?

For every held-out quickstart pair in both candidate orders, the judge prompt is followed by a
forced ``<think>`` + lead, and the two replies are scored as continuations (summed log-prob of
the tokens where they differ). Leads: "" (the "copy" trace) and the bare question (the "qa"
trace). Accuracy = share of rows where the true reply scores higher; position 1 share = how
often the reply shown first wins. No training: this is the ceiling a restate-then-answer trace
starts from, for the base model or for an adapter (``--adapter``).

    .venv/bin/python bench/experiments/quickstart_choice_probe.py --data /tmp/qs/qa [--limit 200]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="a make_quickstart_data.py folder")
    ap.add_argument("--template", default=str(ROOT / "examples/quickstart/judge.jinja"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--limit", type=int, default=200)
    args = ap.parse_args()

    from rmkit.models.loading import load_model
    from rmkit.prompts import get_template, render_judge_messages
    from rmkit.serve.score import continuation_logprobs

    loaded = (
        load_model(args.model, adapter=args.adapter) if args.adapter else load_model(args.model)
    )
    tpl = get_template(args.template)
    rows = [json.loads(x) for x in (args.data / "dev.jsonl").read_text().splitlines()]
    rows = rows[: args.limit]
    tok = loaded.tokenizer
    result = {}
    for lead_name in ("copy", "qa"):
        right = first = 0
        for row in rows:
            rec = {"id": row["id"], "prompt": row["prompt"], "task": "text",
                   "candidates": [row["chosen"], row["rejected"]], "label": 0}  # fmt: skip
            lead = f"{row['question']} " if lead_name == "qa" else ""
            for order in ([0, 1], [1, 0]):
                conv = render_judge_messages(rec, order, tpl)
                conts = [
                    tok(f"<think>{lead}{rec['candidates'][c]}", add_special_tokens=False)[
                        "input_ids"
                    ]
                    for c in (0, 1)
                ]
                s = continuation_logprobs(loaded, conv, conts)
                right += s[0] > s[1]
                first += s[order[0]] > s[order[1]]
        n = 2 * len(rows)
        result[lead_name] = {"accuracy": right / n, "position1": first / n, "rows": n}
        print(lead_name, result[lead_name], flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
