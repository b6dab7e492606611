"""MM-RLHF-RewardBench (Acc, Acc+), ImageReward pairs, and unified records."""

from __future__ import annotations

import hashlib
import json

import pytest
from tests.unit.eval.layouts import ScriptedJudge, write_png

from rmkit.data.records import make_record, write_records
from rmkit.eval import EvalConfig, run_eval
from rmkit.eval.benchmarks.mm_rlhf import category_of
from rmkit.eval.predictions import read_predictions

MM_ROWS = [
    # (id, image path, policy)
    ("g1", "mcq/g1_a.png", "right"),
    ("g1", "mcq/g1_b.png", "right"),
    ("g2", "long/g2_a.png", "right"),
    ("g2", "long/g2_b.png", "wrong"),
    ("g3", "short/g3_a.png", "garbage"),
    ("g4", "video/clip.mp4", "right"),
]


def test_mm_rlhf_acc_and_acc_plus(tmp_path):
    root = tmp_path / "MM-RLHF-RewardBench"
    rows = []
    for k, (gid, image, policy) in enumerate(MM_ROWS):
        if image.endswith(".png"):
            write_png(root / image, "source", shade=k)
        rows.append(
            {
                "id": gid,
                "image": image,
                "prompt": f"Q policy:{policy} q{k}",
                "chosen": f"GOOD {k}",
                "rejected": f"BAD {k}",
            }
        )
    (root / "mm_reward_bench.json").write_text(json.dumps(rows))
    cfg = EvalConfig(
        benchmark="mm-rlhf", data=str(root), output=str(tmp_path / "o"), judge={"model": "s"}
    )
    m = run_eval(cfg, backend=ScriptedJudge())
    assert m["n_loaded"] == 5 and m["skipped_rows"] == {"video input": 1}
    assert m["protocol"] == "acc" and m["overall"] == pytest.approx(3 / 5)
    assert m["categories"] == pytest.approx({"long": 0.5, "mcq": 1.0, "short": 0.0})
    plus = m["protocols"]["acc_plus"]
    assert plus["n"] == 3 and plus["overall"] == pytest.approx(1 / 3)
    assert plus["categories"] == pytest.approx({"long": 0.0, "mcq": 1.0, "short": 0.0})


def test_mm_rlhf_category_from_first_folder():
    assert category_of("mcq/x/1.jpg") == "mcq"
    assert category_of("./safety/2.png") == "safety"
    assert category_of("loose.png") == "uncategorised"


def test_imagereward_pairs_with_different_ranks(tmp_path):
    root = tmp_path / "ImageReward"
    kinds = {"p1": ["good", "bad", "bad"], "p2": ["bad", "good"]}
    rows = []
    for pid, policy, ranks in (("p1", "right", [1, 2, 2]), ("p2", "wrong", [2, 1])):
        gens = []
        for i, kind in enumerate(kinds[pid]):
            rel = f"images/{pid}_{i}.png"
            write_png(root / rel, kind, shade=i)
            gens.append(rel)
        rows.append(
            {
                "id": pid,
                "prompt": f"a scene policy:{policy} q{pid}",
                "generations": gens,
                "ranking": ranks,
            }
        )
    (root / "test.json").write_text(json.dumps(rows))
    cfg = EvalConfig(
        benchmark="imagereward",
        data=str(root / "test.json"),
        output=str(tmp_path / "o"),
        judge={"model": "s"},
    )
    m = run_eval(cfg, backend=ScriptedJudge())
    assert m["n_loaded"] == 3 and m["skipped_rows"] == {"pair with equal human rank": 1}
    assert m["overall"] == pytest.approx(2 / 3) and m["categories"] == pytest.approx(
        {"pairs": 2 / 3}
    )


def test_records_split_of_a_built_dataset(tmp_path):
    root = tmp_path / "built"
    write_png(root / "images" / "a.png", "source")
    recs = [
        make_record(
            id="r1",
            source="src-a",
            task="text",
            prompt="Q policy:right q1",
            candidates=["BAD x", "GOOD y"],
            label=1,
        ),
        make_record(
            id="r2",
            source="src-a",
            task="text",
            prompt="Q policy:wrong q2",
            candidates=["GOOD x", "BAD y"],
            label=0,
        ),
        make_record(
            id="r3",
            source="src-b",
            task="image_understanding",
            prompt="Look policy:right q3",
            images=["images/a.png"],
            candidates=["BAD a", "BAD b", "GOOD c"],
            label=2,
        ),
        make_record(
            id="r4",
            source="src-b",
            task="text",
            prompt="Q q4",
            candidates=["x", "y"],
            label=None,
            label_kind="tie",
        ),
        make_record(
            id="r5",
            source="src-b",
            task="text",
            prompt="Q policy:garbage q5",
            candidates=["GOOD x", "BAD y"],
            label=0,
        ),
        make_record(
            id="r6",
            source="src-c",
            task="image_understanding",
            prompt=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": "images/a.png"},
                        {"type": "text", "text": "What? policy:right q6"},
                    ],
                }
            ],
            candidates=["GOOD a", "BAD b"],
            label=0,
        ),
    ]
    write_records(root / "test.jsonl", recs)
    write_records(root / "train.jsonl", recs[:1])
    outputs = {  # a built dataset: readers check its split files against the manifest
        f: {"sha256": hashlib.sha256((root / f).read_bytes()).hexdigest()}
        for f in ("test.jsonl", "train.jsonl")
    }
    (root / "manifest.json").write_text(json.dumps({"outputs": outputs}))
    cfg = EvalConfig(
        benchmark="records", data=str(root), output=str(tmp_path / "o"), judge={"model": "s"}
    )
    m = run_eval(cfg, backend=ScriptedJudge())
    assert m["n_loaded"] == 5 and m["skipped_rows"] == {"label_kind tie": 1}
    assert m["overall"] == pytest.approx(3 / 5)
    assert m["categories"] == pytest.approx({"image_understanding": 1.0, "text": 1 / 3})
    assert m["subcategories"] == pytest.approx({"src-a": 0.5, "src-b": 0.5, "src-c": 1.0})
    preds = read_predictions(tmp_path / "o" / "predictions.jsonl")
    r6 = next(p for p in preds if p["id"] == "r6")
    images = [part["image"] for part in r6["prompt"][-1]["content"] if part["type"] == "image"]
    assert images == [str((root / "images" / "a.png").resolve())]
