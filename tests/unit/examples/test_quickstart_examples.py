"""The bundled quickstart data (examples/quickstart/) and its rule-based consistency reward."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
QS = REPO / "examples" / "quickstart"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def rewards():
    return _load("qs_rewards", QS / "rewards.py")


def test_generator_reproduces_the_bundled_files(tmp_path):
    gen = _load("make_quickstart_data", REPO / "scripts" / "make_quickstart_data.py")
    stats = json.loads((QS / "stats.json").read_text())
    pairs = stats["pairs"]
    argv = ["--kinds", "facts", "--train", str(pairs["train"]), "--dev", str(pairs["dev"]),
            "--transfer-per-fact", str(stats["transfer_per_fact"]),
            "--seed", str(stats["seed"]), "--trace", stats["trace"], "--output", str(tmp_path)]  # fmt: skip
    assert gen.main(argv) == 0
    names = ("train.jsonl", "dev.jsonl", "final.jsonl", "transfer.jsonl", "traces.jsonl")
    for name in (*names, "stats.json"):
        assert (tmp_path / name).read_bytes() == (QS / name).read_bytes(), name


def test_copy_traces_repeat_the_true_reply_with_its_shown_label():
    traces = [json.loads(x) for x in (QS / "traces.jsonl").read_text().splitlines()]
    train = {r["id"]: r for r in map(json.loads, (QS / "train.jsonl").read_text().splitlines())}
    assert len(traces) == 2 * len(train)
    for first, second in zip(traces[::2], traces[1::2], strict=True):
        assert first["meta"]["order"] == [0, 1] and second["meta"]["order"] == [1, 0]
        row = train[first["id"].rsplit("-", 1)[0]]
        for t in (first, second):
            k = t["verdict"]
            assert t["messages"][-1]["content"] == (
                f"<think>{row['chosen']} ({k})</think><answer>{k}</answer>"
            )
            assert f"Response {k}: {row['chosen']} ({k})" in t["messages"][1]["content"]


def _rows(name: str) -> list[dict]:
    return [json.loads(x) for x in (QS / name).read_text().splitlines()]


def test_pools_come_from_disjoint_facts():
    """train, dev, final and transfer share no fact (cluster) and no question; final is one pair
    per fact of the final banks; transfer is a relation family absent from train and dev."""
    pools = {p: _rows(f"{p}.jsonl") for p in ("train", "dev", "final", "transfer")}
    clusters = {p: {r["cluster"] for r in rows} for p, rows in pools.items()}
    questions = {p: {r["question"] for r in rows} for p, rows in pools.items()}
    names = sorted(pools)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not clusters[a] & clusters[b], (a, b)
            assert not questions[a] & questions[b], (a, b)
    assert len(pools["final"]) == len(clusters["final"]) >= 200
    assert len(pools["dev"]) >= 200
    relations = {p: {c.split(":")[0] for c in clusters[p]} for p in pools}
    assert not relations["transfer"] & (relations["train"] | relations["dev"] | relations["final"])
    assert all(
        r["cluster"] == r["rule"].replace(": ", ":", 1) for rows in pools.values() for r in rows
    )


def test_generator_refuses_a_fact_in_two_pools(tmp_path):
    gen = _load("make_quickstart_data", REPO / "scripts" / "make_quickstart_data.py")
    bank = tmp_path / "facts.yaml"
    bank.write_text(
        "capital:\n  question: What is the capital of {key}?\n"
        "  sentence: The capital of {key} is {value}.\n"
        "  facts: {France: Paris, Peru: Lima}\n  final: {Peru: Lima}\n"
    )
    with pytest.raises(ValueError, match="capital 'Peru' is in both"):
        gen.load_facts(bank, 0)


def test_no_tuning_input_reads_the_final_pool():
    """Settings are chosen on dev: no experiment script or tuning recipe names final.jsonl; the
    quickstart recipe reads it only through its reported-split variable."""
    tuning = [*(REPO / "bench").rglob("*.py"), *(REPO / "bench").rglob("*.yaml")]
    tuning += [*(REPO / "bench").rglob("*.sh")]
    assert tuning
    offenders = [str(p) for p in tuning if "final.jsonl" in p.read_text(errors="replace")]
    assert not offenders, offenders
    # a script that runs the recipe (whose default split is final) sets the dev split
    runners = [p for p in tuning if "quickstart.yaml" in p.read_text(errors="replace")]
    assert runners
    unset = [str(p) for p in runners if "vars.split=dev" not in p.read_text(errors="replace")]
    assert not unset, unset


def _messages(r1: str, r2: str) -> list[dict]:
    user = (
        f"Question: Q?\n\nResponse 1: {r1} (1)\nResponse 2: {r2} (2)\n\nWhich response is correct?"
    )
    return [{"role": "system", "content": "s"}, {"role": "user", "content": user}]


@pytest.mark.parametrize(
    ("completion", "want"),
    [
        ("<think>Lima is it. (1)</think><answer>1</answer>", 1.0),
        ("<think>Oslo is it. (2)</think><answer>2</answer>", 1.0),
        # the right label after the wrong reply, or the labels swapped
        ("<think>Oslo is it. (2)</think><answer>1</answer>", 0.0),
        ("<think>Oslo is it. (1)</think><answer>1</answer>", 0.0),
        # not verbatim, no label, missing or doubled blocks, unknown label
        ("<think>Lima is it (1)</think><answer>1</answer>", 0.0),
        ("<think>Lima is it.</think><answer>1</answer>", 0.0),
        ("<answer>1</answer>", 0.0),
        ("<think>Lima is it. (1)</think><answer>1</answer><answer>1</answer>", 0.0),
        ("<think>Lima is it. (3)</think><answer>3</answer>", 0.0),
        # surrounding whitespace inside the blocks is tolerated
        ("<think> Lima is it. (1)\n</think><answer> 1 </answer>", 1.0),
    ],
)
def test_restates_choice(rewards, completion, want):
    assert rewards.restates_choice(completion, _messages("Lima is it.", "Oslo is it.")) == want


def test_restates_choice_without_a_quickstart_prompt_is_zero(rewards):
    assert rewards.restates_choice("<think>x (1)</think><answer>1</answer>", None) == 0.0
    other = [{"role": "user", "content": "[Response 1]\nx\n\n[Response 2]\ny"}]
    assert rewards.restates_choice("<think>x (1)</think><answer>1</answer>", other) == 0.0
