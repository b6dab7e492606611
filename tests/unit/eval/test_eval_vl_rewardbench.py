"""VL-RewardBench: both native layouts, category rule, strict and official protocols."""

from __future__ import annotations

import json

import pytest
from tests.unit.eval.layouts import ScriptedJudge, vl_rewardbench_hub, write_png

from rmkit.eval import EvalConfig, rescore, run_eval
from rmkit.eval.benchmarks.vl_rewardbench import category_of, strip_image_token
from rmkit.eval.predictions import read_predictions

# (id, policy, human_ranking); one letter per vote (5 votes, the protocol default).
ROWS = [
    ("RLAIF-V_1", "seq=rrrrr", [0, 1]),  # hallucination: strict right, official agree
    ("RLHF-V-2", "seq=rrwww", [0, 1]),  # hallucination: wrong, reject
    (
        "hallucination_povid_3",
        "seq=rruuu",
        [1, 0],
    ),  # hallucination: right, dropped (mostly unparsable)
    ("rlaif_4", "seq=rruuw", [0, 1]),  # general (lower case): right, dropped (r/u tie)
    ("mathverse_5", "seq=rrruu", [0, 1]),  # reasoning: right, agree
    ("mmmu-pro_6", "seq=wwuur", [1, 0]),  # reasoning: wrong, dropped (w/u tie)
    ("wildvision_7", "seq=wwwwr", [0, 1]),  # general: wrong, reject
    ("MathVerse_8", "seq=uuuuu", [0, 1]),  # general (case): wrong, dropped
    ("RLAIF-V_9", "seq=rrrrw", [0, 1]),  # hallucination: right, agree
    ("wildvision_10", "seq=rrrrr", [0, 0]),  # tied human ranking: not an item
]


@pytest.mark.parametrize(
    "item_id, category",
    [
        ("RLAIF-V_12", "hallucination"),
        ("RLHF-V-3", "hallucination"),
        ("hallucination_pair-7", "hallucination"),
        ("povid_1", "general"),  # not a listed prefix
        ("rlaif_1", "general"),  # case-sensitive
        ("mathverse_0", "reasoning"),
        ("mmmu-pro_2", "reasoning"),
        ("MathVerse_1", "general"),
        ("wildvision-battle_1", "general"),
        ("nounderscore", "general"),
    ],
)
def test_category_from_id_prefix(item_id, category):
    assert category_of(item_id) == category


def test_image_token_is_stripped():
    assert strip_image_token("<image>\nWhat?") == "What?"
    assert strip_image_token("What <image>?") == "What <image>?"


def _run(tmp_path, **kw):
    data = vl_rewardbench_hub(tmp_path / "vlrb", ROWS)
    cfg = EvalConfig(
        benchmark="vl-rewardbench",
        data=str(data),
        output=str(tmp_path / "out"),
        judge={"model": "scripted"},
        **kw,
    )
    return cfg, run_eval(cfg, backend=ScriptedJudge())


def test_strict_and_official_match_hand_computed(tmp_path):
    cfg, m = _run(tmp_path)
    assert (cfg.votes, cfg.sampling.temperature, cfg.sampling.top_p) == (5, 0.2, 0.2)
    assert (
        m["n_loaded"] == 9
        and m["n_rows_read"] == 10
        and m["skipped_rows"] == {"tied human ranking": 1}
    )
    assert m["protocol"] == "strict" and m["n"] == 9
    assert m["overall"] == pytest.approx(5 / 9)
    assert m["categories"] == pytest.approx(
        {"general": 1 / 3, "hallucination": 3 / 4, "reasoning": 1 / 2}
    )
    assert m["macro"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    off = m["protocols"]["official"]
    assert off["n"] == 5 and off["n_dropped"] == 4
    assert off["overall"] == pytest.approx(3 / 5)
    assert off["categories"] == pytest.approx(
        {"general": 0.0, "hallucination": 2 / 3, "reasoning": 1.0}
    )
    assert off["macro"] == pytest.approx((0 + 2 / 3 + 1) / 3)
    assert m["n_samples"] == 45 and m["n_unparsable"] == 14
    assert m["parse_failure_rate"] == pytest.approx(14 / 45)
    assert m["position_consistency"] is None
    assert (m["seed"], m["template"], m["model"], m["sampling"]["temperature"]) == (
        0,
        "default",
        "scripted",
        0.2,
    )


def test_outputs_written_and_rescore_is_exact(tmp_path):
    cfg, m = _run(tmp_path)
    out = tmp_path / "out"
    for name in (
        "predictions.jsonl",
        "metrics.json",
        "report.md",
        "vl-rewardbench.png",
        "config.json",
        "dataset.json",
    ):
        assert (out / name).is_file(), name
    preds = read_predictions(out / "predictions.jsonl")
    assert len(preds) == 45 and len({(p["id"], p["sample"]) for p in preds}) == 45
    line = preds[0]
    assert {"prompt", "output", "verdict", "order", "correct", "pick", "shown_choice"} <= set(line)
    assert line["prompt"][-1]["role"] == "user"
    before = (out / "metrics.json").read_bytes()
    (out / "metrics.json").unlink()
    rescore(out)
    assert (out / "metrics.json").read_bytes() == before
    assert json.loads(before)["overall"] == pytest.approx(5 / 9)
    report = (out / "report.md").read_text()
    assert "strict (headline)" in report and "55.6" in report


def test_images_from_bytes_are_cached_once_by_content(tmp_path):
    _run(tmp_path)
    cached = sorted((tmp_path / "out" / "cache" / "images").glob("*.png"))
    assert len(cached) == 3  # three distinct image contents among ten rows
    preds = read_predictions(tmp_path / "out" / "predictions.jsonl")
    parts = [p for p in preds[0]["prompt"][-1]["content"] if p["type"] == "image"]
    assert parts and parts[0]["image"] in {str(c) for c in cached}


def test_github_jsonl_layout_with_image_paths(tmp_path):
    root = tmp_path / "gh"
    lines = []
    for k, (item_id, _policy, ranking) in enumerate(ROWS[:4]):
        write_png(root / "images" / f"{item_id}.png", "source", shade=k)
        lines.append(
            {
                "id": item_id,
                "query": f"<image>\nQ policy:right q{k}",
                "response": [f"GOOD {k}", f"BAD {k}"]
                if ranking == [0, 1]
                else [f"BAD {k}", f"GOOD {k}"],
                "image_path": f"{item_id}.png",
                "human_ranking": ranking,
            }
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / "vl_rewardbench.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = EvalConfig(
        benchmark="vl-rewardbench",
        data=str(root),
        output=str(tmp_path / "o"),
        judge={"model": "s"},
        votes=1,
    )
    m = run_eval(cfg, backend=ScriptedJudge())
    assert m["n"] == 4 and m["overall"] == 1.0
    assert m["categories"] == {"general": 1.0, "hallucination": 1.0}
    assert m["protocols"]["official"]["n"] == 4


def test_missing_image_names_the_file_and_field(tmp_path):
    root = tmp_path / "gh"
    root.mkdir()
    row = {
        "id": "a_1",
        "query": "q",
        "response": ["x", "y"],
        "image_path": "nope.png",
        "human_ranking": [0, 1],
    }
    (root / "data.jsonl").write_text(json.dumps(row) + "\n")
    cfg = EvalConfig(
        benchmark="vl-rewardbench", data=str(root), output=str(tmp_path / "o"), judge={"model": "s"}
    )
    from rmkit.errors import DataError

    with pytest.raises(DataError, match=r"data.jsonl:1: field 'image_path'.*nope.png"):
        run_eval(cfg, backend=ScriptedJudge())


def test_save_to_disk_arrow_layout_and_an_output_inside_it_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    hub = vl_rewardbench_hub(
        tmp_path / "hub", [(f"RLAIF-V_{k}", "right", [0, 1]) for k in range(3)]
    )
    table = pq.read_table(hub / "data" / "test-00000-of-00001.parquet")
    root = tmp_path / "saved"
    for split, part in (("test", table), ("train", table.slice(0, 1))):
        (root / split).mkdir(parents=True)
        arrow = str(root / split / "data-00000-of-00001.arrow")
        with pa.OSFile(arrow, "wb") as sink, pa.ipc.new_stream(sink, part.schema) as writer:
            writer.write_table(part)
        (root / split / "state.json").write_text("{}")
        (root / split / "dataset_info.json").write_text("{}")
    (root / "dataset_dict.json").write_text('{"splits": ["test", "train"]}')
    from rmkit.errors import RmkitError

    inside = EvalConfig(
        benchmark="vl-rewardbench", data=str(root), output=str(root / "out"),
        judge={"model": "s"}, votes=1,
    )  # fmt: skip
    with pytest.raises(RmkitError, match="lies inside the input folder"):
        run_eval(inside, backend=ScriptedJudge())  # a rerun would read its own output
    assert not (root / "out").exists()
    cfg = EvalConfig(
        benchmark="vl-rewardbench",
        data=str(root),
        output=str(tmp_path / "out"),
        judge={"model": "s"},
        votes=1,
    )
    m = run_eval(cfg, backend=ScriptedJudge())
    assert m["n_loaded"] == 3 and m["overall"] == 1.0
    assert run_eval(cfg, backend=ScriptedJudge(fail_after_calls=0))["n_loaded"] == 3  # resumed
    cfg = EvalConfig(
        benchmark="vl-rewardbench",
        data=str(root),
        output=str(tmp_path / "o2"),
        judge={"model": "s"},
        split="dev",
    )
    with pytest.raises(RmkitError, match=r"no files for split 'dev' \(splits found: test, train\)"):
        run_eval(cfg, backend=ScriptedJudge())
