"""The tiny vision-language models through the real CLI, on both image task types.

For every family (Qwen2.5-VL, Qwen3-VL, Idefics3, LLaVA) and task (image understanding: prompt
image and text candidates; image generation: the candidates are images) one chain of stages runs
the way a user runs it:

1. ``rmkit train recipes/tiny/vlm-sft.yaml`` on trace records, LoRA on the language model *and*
   the vision tower/projector (so the vision adapters only move if the pixels reach the loss);
2. ``rmkit train recipes/tiny/vlm-grpo.yaml`` continuing that adapter (GRPO, KL to it);
3. ``rmkit eval --benchmark records`` with the RL adapter as the judge.

Data: ``examples/tiny/vlm{,-gen}-{traces,prefs}.jsonl`` (``scripts/make_tiny_examples.py``).
Every stage is cut to the fewest steps and records that still show the behaviour.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tests.integration.train.train_helpers import (
    DENSE_REWARD,
    REPO,
    TINY,
    assert_all_moved,
    final_weights,
    initial_trainable,
    metrics,
    train,
)

DATA = REPO / "examples" / "tiny"
FAMILIES = ["tiny-qwen2.5-vl", "tiny-qwen3-vl", "tiny-idefics3", "tiny-llava"]
TASKS = {"image_understanding": "vlm", "image_generation": "vlm-gen"}
QUIET = ["logging.plot=false", "logging.tensorboard=false", "checkpoint.every_steps=1000"]
N_EVAL = 3


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads; on a busy machine they only wait for each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _records(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def _image_parts(messages: list[dict]) -> list[str]:
    return [
        part["image"]
        for msg in messages
        if isinstance(msg["content"], list)
        for part in msg["content"]
        if part["type"] == "image"
    ]


def _expected_images(record: dict, order: list[int]) -> list[str]:
    """Absolute paths of the images a judge prompt must show, in order."""
    if record["task"] == "image_generation":  # the candidates, as shown
        return [str(DATA / record["candidates"][i]) for i in order]
    return [str(DATA / ref) for ref in record["images"]]


def test_example_data_is_what_its_generator_writes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_tiny", REPO / "scripts" / "make_tiny_examples.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--output", str(tmp_path)])
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(DATA) for p in DATA.rglob("*") if p.is_file())
    changed = [str(p) for p in written if (tmp_path / p).read_bytes() != (DATA / p).read_bytes()]
    assert not changed, f"examples/tiny differs from scripts/make_tiny_examples.py: {changed}"


def test_example_data_holds_both_tasks():
    for task, stem in TASKS.items():
        prefs = list(_records(DATA / f"{stem}-prefs.jsonl").values())
        traces = list(_records(DATA / f"{stem}-traces.jsonl").values())
        assert len(prefs) == len(traces) == 16
        assert {r["task"] for r in prefs} == {task}
        for rec in prefs:
            refs = rec["candidates"] if task == "image_generation" else rec["images"]
            assert refs and all((DATA / ref).is_file() for ref in refs)
        for trace in traces:
            shown = _image_parts(trace["messages"])
            assert shown == trace["images"]
            assert len(shown) == (2 if task == "image_generation" else 1)
            assert trace["messages"][-1]["role"] == "assistant"


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("family", FAMILIES)
def test_sft_then_grpo_then_eval(family, task, tmp_path, rmkit_home):
    from rmkit.cli.main import main
    from rmkit.models.lora import vision_part

    stem = TASKS[task]
    traces, prefs = DATA / f"{stem}-traces.jsonl", DATA / f"{stem}-prefs.jsonl"

    # 1. SFT: two steps of two traces; every adapter, vision ones included, must move.
    sft_args = [
        f"model.spec={family}", f"data.path={traces}", "max_steps=2",
        "batch.sequences_per_step=2", "weights.lora.include_vision=true", *QUIET,
    ]  # fmt: skip
    before = initial_trainable(TINY / "vlm-sft.yaml", *sft_args)
    parts = {vision_part(name) for name in before}
    assert parts == {None, "tower", "projector"}, parts
    sft = train(TINY / "vlm-sft.yaml", tmp_path / "sft", *sft_args)
    rows = metrics(sft)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    assert all(r["tokens/supervised"] > 0 and r["grad_norm"] > 0 for r in rows)
    sft_final = final_weights(sft / "final")
    assert_all_moved(before, sft_final)

    # 2. GRPO, one step, continuing the SFT adapter (the KL reference is that adapter).
    rl = train(
        TINY / "vlm-grpo.yaml", tmp_path / "rl", f"model.spec={family}", f"data.path={prefs}",
        f"model.init_from={sft / 'final'}", DENSE_REWARD, "max_steps=1",
        "batch.prompts_per_step=2", "batch.completions_per_prompt=2", "rl.max_new_tokens=8",
        *QUIET,
    )  # fmt: skip
    (row,) = metrics(rl)
    assert row["step"] == 1 and math.isfinite(row["loss"]) and row["grad_norm"] > 0
    assert 0 < row["reward/total"] <= 1 and 1 <= row["response/length"] <= 8
    assert row["policy/kl"] == pytest.approx(0.0, abs=1e-9)
    rl_final = final_weights(rl / "final")
    assert set(rl_final) == set(sft_final)  # the trained adapter only, not the reference
    assert_all_moved(sft_final, rl_final)
    records = _records(prefs)
    samples = [json.loads(s) for s in (rl / "samples" / "step-1.jsonl").read_text().splitlines()]
    prompted = [s for s in samples if "prompt" in s]
    assert len(samples) == 4 and len(prompted) == 2
    for s in prompted:
        assert _image_parts(s["prompt"]) == _expected_images(records[s["id"]], s["order"])

    # 3. Eval of the RL adapter on the records benchmark.
    out = tmp_path / "eval"
    argv = [
        "eval", "--benchmark", "records", "--data", str(prefs), "--model", family,
        "--adapter", str(rl / "final"), "--limit", str(N_EVAL), "--max-new-tokens", "4",
        "--batch-size", str(N_EVAL), "--output", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == list(records)[:N_EVAL]
    for p in preds:
        assert _image_parts(p["prompt"]) == _expected_images(records[p["id"]], p["order"])
        assert 1 <= p["n_tokens"] <= 4 and p["category"] == task
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == m["n_judged"] == m["n_samples"] == len(preds) == N_EVAL
    assert set(m["categories"]) == {task} and 0.0 <= m["overall"] <= 1.0
    assert m["overall"] == sum(bool(p["correct"]) for p in preds) / N_EVAL
    assert json.loads((out / "config.json").read_text())["judge"]["adapter"] == str(rl / "final")
