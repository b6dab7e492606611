"""The papers' distillation behaviours, end to end against a scripted OpenAI-compatible teacher:
R1-Reward's sequential attempts with a difficulty label and a hard subset
(``sampling.attempts``, ``hard``), UnifiedReward-Think's random cold-start sample (``sample``)
and its rejection split that sends only wrong predictions to GRPO (``rejection.rl: wrong``).

The stand-in teacher of the attempt tests counts its answers per record: record A
(``rec-000``) is answered wrongly twice and then rightly, B (``rec-001``) always rightly, C
(``rec-002``) always wrongly. So with ``attempts: 3`` A needs 3 attempts, B 1 and C is never
solved, and exactly 3 + 1 + 3 answers are needed.
"""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
from tests.helpers.openai_server import OpenAITestServer
from tests.integration.distill.distill_helpers import (
    good_position,
    read_jsonl,
    record_index,
    run_cli,
)

from rmkit.data.records import record_problem, trace_problem
from rmkit.utils.io import write_jsonl_atomic

RIGHT_FROM = {0: 3, 1: 1, 2: None}  # record -> first answer (1-based) that is right; None: never


def attempt_teacher():
    """The stand-in teacher (module docstring); returns ``(respond, answers per record)``."""
    calls: Counter = Counter()
    lock = threading.Lock()

    def respond(body: dict) -> str:
        i = record_index(body)
        with lock:
            calls[i] += 1
            n = calls[i]
        good = good_position(body)
        first_right = RIGHT_FROM[i]
        pick = good if first_right is not None and n >= first_right else 3 - good
        return f"<think>record {i} answer {n}</think><answer>{pick}</answer>"

    return respond, calls


def attempt_args(src, url, out, *extra) -> list:
    args = ["distill", "-i", src, "--base-url", url, "--api-model", "gpt-4o", "-o", out]
    args += ["-n", 1, "--temperature", 0, "--set", "sampling.attempts=3"]
    args += ["--set", "hard.min_difficulty=2", *extra]
    return args


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rows}


def check_attempt_outputs(out) -> dict:
    """The outputs of the A/B/C run (module docstring); returns the summary."""
    traces = by_id(read_jsonl(out / "traces.jsonl"))
    assert sorted(traces) == ["rec-000#s2", "rec-001#s0"]
    a, b = traces["rec-000#s2"], traces["rec-001#s0"]
    assert all(trace_problem(t) is None for t in traces.values())
    assert (a["meta"]["attempts"], a["meta"]["difficulty"], a["meta"]["solved"]) == (3, 3, True)
    assert (b["meta"]["attempts"], b["meta"]["difficulty"], b["meta"]["solved"]) == (1, 1, True)
    assert a["messages"][-1]["content"].startswith("<think>record 0 answer 3</think>")
    rejects = by_id(read_jsonl(out / "rejects.jsonl"))
    assert {k: (r["attempt"], r["reason"]) for k, r in rejects.items()} == {
        "rec-000#s0": (1, "wrong_verdict"),
        "rec-000#s1": (2, "wrong_verdict"),
        "rec-002#s0": (1, "wrong_verdict"),
        "rec-002#s1": (2, "wrong_verdict"),
        "rec-002#s2": (3, "wrong_verdict"),
    }
    hard = by_id(read_jsonl(out / "hard.jsonl"))
    assert sorted(hard) == ["rec-000", "rec-002"]  # difficulty >= 2: A (3) and C (never solved)
    assert all(record_problem(r) is None for r in hard.values())
    assert hard["rec-000"]["meta"] == {"attempts": 3, "solved": True, "difficulty": 3}
    assert hard["rec-002"]["meta"] == {"attempts": 3, "solved": False, "difficulty": 4}
    done = by_id(read_jsonl(out / "state" / "done.jsonl"))
    assert {k: (d["attempts"], d["solved"], d["hard"]) for k, d in done.items()} == {
        "rec-000": (3, True, True),
        "rec-001": (1, True, False),
        "rec-002": (3, False, True),
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True
    assert (summary["requested"], summary["kept"], summary["rejected"]) == (7, 2, 5)
    assert summary["attempts"] == {
        "max": 3,
        "made": 7,
        "by_difficulty": {"1": 1, "3": 1, "4": 1},
        "solved": 2,
        "unsolved": 1,
        "hard_records": 2,
        "hard_min_difficulty": 2,
    }
    return summary


def test_attempts_label_difficulty_and_select_the_hard_subset(tmp_path, records_file):
    src = records_file(3)
    respond, calls = attempt_teacher()
    with OpenAITestServer(respond) as srv:
        args = attempt_args(src, srv.url, tmp_path / "out")
        assert run_cli(args) == 0
        assert dict(calls) == {0: 3, 1: 1, 2: 3}  # calls made: 3 + 1 + 3
        assert srv.count() == srv.count(succeeded=True) == 7
        # attempt k sends seed + k - 1 (distinct seeds, even at temperature 0)
        seeds = sorted(r.body["seed"] for r in srv.chat_requests() if record_index(r.body) == 0)
        assert seeds == [0, 1, 2]
        assert all(r.body["temperature"] == 0 for r in srv.chat_requests())
        summary = check_attempt_outputs(tmp_path / "out")
        assert summary["paid_calls"] == 7
        # each attempt >= 2 has its own request cache
        cache = tmp_path / "out" / "cache"
        lines = {p.parent.name: len(p.read_text().splitlines()) for p in cache.rglob("*.jsonl")}
        assert lines == {"cache": 3, "attempt-2": 2, "attempt-3": 2}
        # a rerun of the finished command calls nobody
        assert run_cli(args) == 0 and srv.count() == 7
    # --restart keeps the caches: every attempt is answered from them
    with OpenAITestServer(attempt_teacher()[0]) as srv:
        assert run_cli([*attempt_args(src, srv.url, tmp_path / "out"), "--restart"]) == 0
        assert srv.count() == 0
    again = check_attempt_outputs(tmp_path / "out")
    assert again["tokens"]["total"] == summary["tokens"]["total"]
    assert again["tokens"]["cached"]["samples"] == 7


def test_attempts_resume_after_an_interruption_mid_record(tmp_path, records_file):
    src = records_file(3)
    respond, _ = attempt_teacher()
    with OpenAITestServer(respond) as srv:
        reference = run_cli(attempt_args(src, srv.url, tmp_path / "ref"))
        assert reference == 0 and srv.count() == 7
    ref_summary = check_attempt_outputs(tmp_path / "ref")
    # requests 0-2 are attempt 1 of A, B, C; 3-4 attempt 2 of A and C: one of them fails
    respond, calls = attempt_teacher()
    with OpenAITestServer(respond, faults=[None, None, None, None, "400"]) as srv:
        args = attempt_args(src, srv.url, tmp_path / "out")
        assert run_cli(args) == 1
        first = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert first["complete"] is False and first["records_done"] == 1  # B only
        assert sum(calls.values()) == 4  # 3 first attempts + the attempt 2 that got through
        assert run_cli(args) == 0
        assert dict(calls) == {0: 3, 1: 1, 2: 3}  # no finished attempt was asked again
        assert srv.count(succeeded=True) == 7 and srv.count() == 8  # + the failed request
    summary = check_attempt_outputs(tmp_path / "out")
    assert summary["tokens"]["total"] == ref_summary["tokens"]["total"]  # nothing counted twice
    assert summary["tokens"]["cached"]["samples"] == 3  # A and C's attempt 1, one attempt 2
    ref = {
        k: v["messages"] for k, v in by_id(read_jsonl(tmp_path / "ref" / "traces.jsonl")).items()
    }
    got = {
        k: v["messages"] for k, v in by_id(read_jsonl(tmp_path / "out" / "traces.jsonl")).items()
    }
    assert got == ref


def test_attempts_label_the_rl_set_of_rejection_sampling(tmp_path, records_file):
    src = records_file(3)
    respond, calls = attempt_teacher()
    with OpenAITestServer(respond) as srv:
        args = attempt_args(src, srv.url, tmp_path / "out", "--mode", "rejection-sampling")
        assert run_cli(args) == 0
    assert sum(calls.values()) == 7
    (rl,) = read_jsonl(tmp_path / "out" / "rl.jsonl")
    assert rl["id"] == "rec-002" and record_problem(rl) is None
    assert rl["meta"] == {"attempts": 3, "solved": False, "difficulty": 4}
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "out" / "hard.jsonl")) == [
        "rec-000",
        "rec-002",
    ]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["sft_records"], summary["rl_records"], summary["dropped_records"]) == (2, 1, 0)


# ---------------------------------------------------------------- rejection.rl


def split_respond(body: dict) -> str:
    """Record 0: right and well formatted; 1: right, text after </answer>; 2: wrong."""
    i, good = record_index(body), good_position(body)
    pick = 3 - good if i == 2 else good
    text = f"<think>record {i}</think><answer>{pick}</answer>"
    return text + " Hope this helps!" if i == 1 else text


@pytest.mark.parametrize(
    ("rl", "to_rl", "dropped"),
    [("not_kept", ["rec-001", "rec-002"], 0), ("wrong", ["rec-002"], 1)],
)
def test_rejection_rl_wrong_sends_only_wrong_predictions_to_rl(
    tmp_path, records_file, rl, to_rl, dropped
):
    src = records_file(3)
    with OpenAITestServer(split_respond) as srv:
        args = ["distill", "--mode", "rejection-sampling", "-i", src, "--base-url", srv.url]
        args += ["--api-model", "policy", "-n", 1, "-o", tmp_path / "out"]
        args += ["--set", f"rejection.rl={rl}"]
        assert run_cli(args) == 0
    out = tmp_path / "out"
    assert [t["id"] for t in read_jsonl(out / "traces.jsonl")] == ["rec-000#s0"]
    assert sorted(r["id"] for r in read_jsonl(out / "rl.jsonl")) == to_rl
    rejects = {r["id"]: r["reason"] for r in read_jsonl(out / "rejects.jsonl")}
    assert rejects == {"rec-001#s0": "bad_format", "rec-002#s0": "wrong_verdict"}
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["sft_records"], summary["rl_records"]) == (1, len(to_rl))
    assert summary["dropped_records"] == dropped
    done = by_id(read_jsonl(out / "state" / "done.jsonl"))
    assert done["rec-001"].get("dropped", False) is bool(dropped)


# ---------------------------------------------------------------- sample


def two_source_records(n: int) -> list[dict]:
    """``n`` text records, the first half from source "hpd", the second from "pick"."""
    return [
        {
            "id": f"rec-{i:03d}",
            "source": "hpd" if i < n // 2 else "pick",
            "task": "text",
            "prompt": f"Question number {i}?",
            "images": [],
            "candidates": [f"GOOD-{i}", f"BAD-{i}"],
            "label": 0,
            "label_kind": "preferred",
            "meta": {},
        }
        for i in range(n)
    ]


def right_respond(body: dict) -> str:
    return f"<think>record {record_index(body)}</think><answer>{good_position(body)}</answer>"


def test_sample_draws_a_seeded_random_subset_stable_across_resume(tmp_path):
    src = tmp_path / "records.jsonl"
    write_jsonl_atomic(src, two_source_records(100))

    def run(out, *extra, faults=None) -> int:
        with OpenAITestServer(right_respond, faults=faults) as srv:
            args = ["distill", "-i", src, "--base-url", srv.url, "--api-model", "m", "-n", 1]
            return run_cli([*args, "-o", tmp_path / out, "--concurrency", 1, *extra])

    def sources(out) -> tuple[set[str], set[str]]:
        traces = read_jsonl(tmp_path / out / "traces.jsonl")
        return {t["meta"]["source_id"] for t in traces}, {t["meta"]["source"] for t in traces}

    assert run("a", "--set", "sample=10") == 0
    ids, srcs = sources("a")
    assert len(ids) == 10 and srcs == {"hpd", "pick"}  # from the whole input, not its head
    assert run("b", "--set", "sample=10") == 0
    assert sources("b")[0] == ids  # same seed, same records
    assert run("c", "--set", "sample=10", "--seed", 1) == 0
    assert len(sources("c")[0]) == 10 and sources("c")[0] != ids
    # an interrupted run resumes with the same records
    assert (
        run("d", "--set", "sample=10", "--set", "chunk_records=1", faults=[None] * 4 + ["400"]) == 1
    )
    assert 0 < len(read_jsonl(tmp_path / "d" / "state" / "done.jsonl")) < 10
    assert run("d", "--set", "sample=10") == 0
    assert sources("d")[0] == ids
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert (summary["records"], summary["records_done"], summary["kept"]) == (10, 10, 10)
    # limit keeps its meaning: the first N records
    assert run("e", "--limit", 10) == 0
    assert sources("e") == ({f"rec-{i:03d}" for i in range(10)}, {"hpd"})


class LocalTeacher:
    """A generation backend in-process (no request cache), answering like :func:`attempt_teacher`
    and recording the seed of each ``generate`` call."""

    def __init__(self):
        self.respond, self.calls = attempt_teacher()
        self.seeds: list[int] = []
        self.stats = {"sequences": 0, "generated_tokens": 0}

    def generate(self, conversations, params):
        from rmkit.generation.base import Completion

        self.seeds.append(params.seed)
        out = []
        for conv in conversations:
            text = self.respond({"messages": conv})
            self.stats["sequences"] += 1
            out.append([Completion(text, len(text.split()), None, "stop")])
        return out

    def close(self):
        pass


def test_attempts_with_a_local_generator(tmp_path, records_file):
    from rmkit.config.kinds import load_config
    from rmkit.distill import run_distill

    src = records_file(3)
    sets = ["sampling.samples=1", "sampling.temperature=0", "sampling.attempts=3"]
    sets += ["hard.min_difficulty=2", "chunk_records=8"]
    cfg = load_config(
        None,
        kind="distill",
        base={"input": str(src), "output": str(tmp_path / "out"), "teacher": {"model": "x"}},
        overrides=sets,
    )
    teacher = LocalTeacher()
    summary = run_distill(cfg, backend=teacher)
    assert dict(teacher.calls) == {0: 3, 1: 1, 2: 3}
    assert len(teacher.seeds) == len(set(teacher.seeds)) == 3  # one chunk per attempt
    assert summary["sequences"] == 7
    check_attempt_outputs(tmp_path / "out")
