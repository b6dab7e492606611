"""SECURITY-REVIEW L5: records with 27 candidates run through distill, eval and train's rendering
(they used to crash with IndexError: string index out of range)."""

from __future__ import annotations

import json

from tests.helpers.openai_server import OpenAITestServer, last_user_text
from tests.integration.distill.distill_helpers import read_jsonl, run_cli

N = 27


def _records(path, n_records=2):
    rows = [
        {
            "id": f"w{k}",
            "source": "t",
            "task": "text",
            "prompt": f"Question {k}?",
            "images": [],
            "candidates": ["GOOD"] + [f"bad {i}" for i in range(1, N)],
            "label": 0,
            "label_kind": "preferred",
            "meta": {},
        }
        for k in range(n_records)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _answer(body) -> str:
    import re

    m = re.search(r"\[Response (\d+)\]\s*GOOD", last_user_text(body))
    return f"<think>it is best</think><answer>{m.group(1)}</answer>"


def test_distill_and_eval_with_27_candidates(tmp_path):
    (tmp_path / "data").mkdir()
    src = _records(tmp_path / "data" / "train.jsonl")
    with OpenAITestServer(_answer) as srv:
        args = ["distill", "--input", src, "--base-url", srv.url, "--api-model", "test-model"]
        assert run_cli([*args, "--output", tmp_path / "d", "--samples", 1]) == 0
        traces = read_jsonl(tmp_path / "d" / "traces.jsonl")
        assert len(traces) == 2
        prompt = last_user_text(srv.chat_requests()[0].body)
        assert "[Response 27]" in prompt and '"27"' in prompt
        args = ["eval", "--benchmark", "records", "--data", src]  # a file: no manifest needed
        args += ["--base-url", srv.url, "--api-model", "test-model", "--output", tmp_path / "e"]
        assert run_cli(args) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["overall"] == 1.0


def test_train_rendering_with_27_candidates():
    from rmkit.prompts import parse_verdict, render_judge_messages
    from rmkit.training.data import judge_order

    rec = json.loads(json.dumps({"id": "w", "task": "text", "prompt": "Q?", "label": 0}))
    rec["candidates"] = ["GOOD"] + [f"bad {i}" for i in range(1, N)]
    order = judge_order(rec, seed=1, epoch=0)
    msgs = render_judge_messages(rec, order, "ab")
    shown = order.index(0)
    from rmkit.prompts.templates import letter_label

    assert f"[Response {letter_label(shown)}]\nGOOD" in msgs[-1]["content"]
    v = parse_verdict(f"<think>x</think><answer>{letter_label(shown)}</answer>", "ab", N)
    assert v.choice == shown
