"""Distill inputs: records, seeded orders, image paths, caption/image record pairing, config."""

from __future__ import annotations

import os

import pytest

from rmkit.config.kinds import load_config
from rmkit.distill.config import DistillConfig
from rmkit.distill.inputs import (
    caption_text,
    pair_caption_records,
    read_input,
    rebase_record,
    record_order,
    sample_records,
    stored_messages,
)
from rmkit.distill.prepare import fingerprint
from rmkit.errors import ConfigError, DataError, RmkitError
from rmkit.utils.io import write_jsonl_atomic


def rec(i, **kw):
    base = {
        "id": f"r{i}",
        "source": "t",
        "task": "text",
        "prompt": f"q{i}",
        "images": [],
        "candidates": ["a", "b"],
        "label": 0,
        "label_kind": "preferred",
        "meta": {},
    }
    return {**base, **kw}


def test_record_order_is_a_seeded_balanced_permutation():
    assert record_order("x", 3, 0) == record_order("x", 3, 0)
    assert sorted(record_order("x", 5, 7)) == [0, 1, 2, 3, 4]
    firsts = [record_order(f"id-{i}", 2, 0)[0] for i in range(400)]
    assert 150 < sum(firsts) < 250  # roughly half the records show candidate 1 first
    assert [record_order(f"id-{i}", 2, 1) for i in range(40)] != [
        record_order(f"id-{i}", 2, 0) for i in range(40)
    ]


def test_read_input_validates_allows_unlabelled_and_rejects_duplicate_ids(tmp_path):
    path = tmp_path / "in.jsonl"
    write_jsonl_atomic(path, [rec(0), rec(1, label=None), rec(2)])
    got = read_input(path)
    assert [r["id"] for r in got] == ["r0", "r1", "r2"] and got[1]["label"] is None
    assert len(read_input(path, limit=2)) == 2
    write_jsonl_atomic(path, [rec(0), rec(1), rec(0)])
    with pytest.raises(DataError, match=r"in.jsonl:3: field 'id'.*line 1"):
        read_input(path)
    write_jsonl_atomic(path, [rec(0, candidates=["only one"])])
    with pytest.raises(DataError, match="candidates"):
        read_input(path)


def test_stored_paths_are_relative_to_the_output_folder(tmp_path):
    data, out = tmp_path / "data", tmp_path / "runs" / "x"
    r = rec(
        0,
        task="image_understanding",
        images=["images/a.png"],
        prompt=[{"role": "user", "content": [{"type": "image", "image": "images/b.png"}]}],
    )
    got = rebase_record(r, data, out)
    assert got["images"] == [os.path.join("..", "..", "data", "images", "a.png")]
    assert got["prompt"][0]["content"][0]["image"] == "../../data/images/b.png"
    assert r["images"] == ["images/a.png"]  # the input record is not modified
    gen = rec(1, task="image_generation", candidates=["c/1.png", "data:image/png;base64,AA"])
    assert rebase_record(gen, data, out)["candidates"] == [
        "../../data/c/1.png",
        "data:image/png;base64,AA",
    ]
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "image", "image": str(data / "images/a.png")}]},
    ]
    stored, refs = stored_messages(msgs, out)
    assert refs == ["../../data/images/a.png"]
    assert stored[1]["content"][0] == {"type": "image", "image": "../../data/images/a.png"}
    assert msgs[1]["content"][0]["image"].startswith(str(data))


def test_caption_records_pair_with_their_image_records(tmp_path):
    img = rec(0, task="image_understanding", images=["i/a.png", "i/b.png"])
    cap = rec(
        5,
        captions={"i/b.png": "two", "i/a.png": "one"},
        meta={"caption_substituted": True, "image_record_id": "r0"},
    )
    orphan = rec(6, meta={"image_record_id": "missing"})
    pairs = pair_caption_records([cap, orphan], [img], tmp_path / "img.jsonl")
    assert pairs[0][1] is img and pairs[1][1] is None
    assert caption_text(cap, img) == "Image 1: one\nImage 2: two"
    assert caption_text({**cap, "captions": {"i/a.png": " one "}}, img) == "one"
    with pytest.raises(RmkitError, match="not a caption-substituted record"):
        pair_caption_records([rec(1)], [img], tmp_path / "img.jsonl")
    with pytest.raises(RmkitError, match="none of the caption records"):
        pair_caption_records([orphan], [img], tmp_path / "img.jsonl")


def test_config_rules(tmp_path):
    api = {"base_url": "http://127.0.0.1:1/v1", "api_model": "m"}
    with pytest.raises(ConfigError, match="either teacher.model"):
        load_config(
            None,
            kind="distill",
            base={"input": "i", "output": "o", "teacher": {**api, "model": "x"}},
        )
    with pytest.raises(ConfigError, match="no teacher"):
        load_config(None, kind="distill", base={"input": "i", "output": "o"})
    with pytest.raises(ConfigError, match="greedy"):
        load_config(
            None,
            kind="distill",
            base={"input": "i", "output": "o", "teacher": api},
            overrides=["sampling.temperature=0", "sampling.samples=2"],
        )
    with pytest.raises(ConfigError, match="image_records"):
        load_config(
            None, kind="distill", base={"input": "i", "output": "o", "teacher": api, "mode": "cmkd"}
        )
    cfg = DistillConfig(
        input="i", output="o", teacher=api, mode="cmkd", cmkd={"image_records": "x"}
    )
    assert cfg.template == "msrl"
    recipe = tmp_path / "r" / "d.yaml"
    recipe.parent.mkdir()
    recipe.write_text(
        "kind: distill\ninput: data/in.jsonl\noutput: out\n"
        "teacher: {base_url: 'http://h/v1', api_model: m}\n"
        "mode: cmkd\ncmkd: {image_records: data/img.jsonl}\n"
    )
    cfg = load_config(recipe, ["sampling.samples=3"])
    assert cfg.input == str(tmp_path / "r" / "data" / "in.jsonl")
    assert cfg.cmkd.image_records == str(tmp_path / "r" / "data" / "img.jsonl")
    assert cfg.sampling.samples == 3
    assert cfg.teacher.name == "m"


def test_sample_records_is_seeded_uniform_and_keeps_input_order():
    records = [rec(i, source="hpd" if i < 50 else "pick") for i in range(100)]
    got = sample_records(records, 10, seed=0)
    assert len(got) == 10 and {r["source"] for r in got} == {"hpd", "pick"}
    assert got == sample_records(records, 10, seed=0)  # reproducible
    assert got != sample_records(records, 10, seed=1)
    assert [r["id"] for r in got] == [r["id"] for r in records if r in got]  # input order
    # a pure function of the seed and the ids: the file order does not matter ...
    assert {r["id"] for r in sample_records(records[::-1], 10, 0)} == {r["id"] for r in got}
    # ... and a larger sample is a superset (a resumed run may grow it, as with limit)
    assert {r["id"] for r in got} <= {r["id"] for r in sample_records(records, 30, 0)}
    assert sample_records(records, 500, 0) == records
    # uniform: over many seeds every record is drawn about equally often
    counts = [0] * 100
    for seed in range(400):
        for r in sample_records(records, 10, seed):
            counts[int(r["id"][1:])] += 1
    assert sum(counts[:50]) == pytest.approx(2000, rel=0.08)
    assert max(counts) < 80 and min(counts) > 15  # expected 40 each


def test_paper_option_rules():
    api = {"base_url": "http://127.0.0.1:1/v1", "api_model": "m"}
    base = {"input": "i", "output": "o", "teacher": api}

    def cfg(*overrides, **extra):
        return load_config(None, kind="distill", base={**base, **extra}, overrides=list(overrides))

    with pytest.raises(ConfigError, match="set limit .* or sample .*not both"):
        cfg("limit=5", "sample=5")
    with pytest.raises(ConfigError, match="sampling.attempts works in modes teacher"):
        cfg("sampling.attempts=3", mode="cmkd", cmkd={"image_records": "x"})
    with pytest.raises(ConfigError, match="hard needs sampling.attempts > 1"):
        cfg("hard.min_difficulty=2")
    with pytest.raises(ConfigError, match="hard.min_difficulty is at most sampling.attempts"):
        cfg("sampling.attempts=2", "hard.min_difficulty=4")
    with pytest.raises(ConfigError, match="rejection.rl"):
        cfg("rejection.rl=wrong")
    with pytest.raises(ConfigError, match="rejection.rl"):
        cfg("rejection.rl=incorrect", mode="rejection-sampling")
    with pytest.raises(ConfigError, match="sampling.attempts"):
        cfg("sampling.attempts=0")
    c = cfg("sampling.attempts=3", "sampling.samples=1", "sampling.temperature=0", "hard={}")
    assert (c.sampling.attempts, c.hard.min_difficulty) == (3, 2)
    c = cfg("sampling.attempts=2", "sampling.samples=4")  # 2 attempts of 4 samples each
    assert (c.sampling.attempts, c.sampling.samples) == (2, 4)
    assert cfg("rejection.rl=wrong", mode="rejection-sampling").rejection.rl == "wrong"
    assert cfg("sample=10000").sample == 10000 and cfg().rejection.rl == "not_kept"
    # the settings fingerprint names the new options only when set: older folders still resume
    old = fingerprint(cfg())
    assert "attempts" not in old["sampling"] and not {"hard", "rl", "sample"} & set(old)
    assert fingerprint(cfg("sample=10")) == old  # like limit, sample may change on a resume
    new = fingerprint(cfg("sampling.attempts=3", "hard.min_difficulty=3"))
    assert (new["sampling"]["attempts"], new["hard"]) == (3, 3)
    assert fingerprint(cfg("rejection.rl=wrong", mode="rejection-sampling"))["rl"] == "wrong"
