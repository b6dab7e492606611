"""Mixing record sets: exact ratios and counts, seeded selection, ids, images, CLI."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from rmkit.cli.main import main
from rmkit.data.mix import integer_weights, mix_datasets, parse_part, plan_counts, select
from rmkit.data.records import load_records, make_record
from rmkit.errors import RmkitError


def test_integer_weights_and_plans_by_hand():
    assert integer_weights([4, 1]) == [4, 1]
    assert integer_weights([0.8, 0.2]) == [4, 1]
    assert integer_weights([2, 6]) == [1, 3]
    assert integer_weights([1.5, 1]) == [3, 2]
    assert plan_counts([1000, 300], [4, 1]) == [1000, 250]  # k = min(1000 // 4, 300 // 1) = 250
    assert plan_counts([1001, 300], [4, 1]) == [1000, 250]  # exact 4:1, never 1001:250
    assert plan_counts([100, 10], [4, 1]) == [40, 10]
    assert plan_counts([1000, 300], [4, 1], total=500) == [400, 100]
    assert plan_counts([1000, 300], [1, 1, 1][:2], total=5) == [
        3,
        2,
    ]  # largest remainder, ties to the first
    assert plan_counts([1000, 300], [700, 300], by="count") == [700, 300]
    with pytest.raises(RmkitError, match="part 2 has 300 record"):
        plan_counts([1000, 300], [1, 1], total=1000)
    assert plan_counts([10, 3], [1, 1], total=20, repeat=True) == [10, 10]
    with pytest.raises(RmkitError, match="whole numbers"):
        plan_counts([10, 10], [1.5, 2], by="count")


def test_parse_part():
    assert parse_part("data/cap=4") == ("data/cap", 4.0)
    assert parse_part("a=b=2.5") == ("a=b", 2.5)
    assert parse_part("data/text") == ("data/text", 1.0)
    with pytest.raises(RmkitError):
        parse_part("x=abc")
    with pytest.raises(RmkitError):
        parse_part("x=0")


def test_selection_takes_exactly_the_number_asked(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text("".join(f'{{"i": {i}}}\n' for i in range(50)))
    for want in (0, 1, 17, 50):
        got = list(select(path, 50, want, random.Random(want)))
        assert len(got) == want and len({line for _, _, line in got}) == want
    rep = list(select(path, 50, 120, random.Random(1)))  # two full passes + 20 more
    assert Counter(c for c, _, _ in rep) == {0: 50, 1: 50, 2: 20}


def write_manifest(folder: Path) -> None:
    """A minimal manifest whose outputs match the split files (mix checks them)."""
    outputs = {
        f.name: {"sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
        for f in sorted(folder.glob("*.jsonl"))
    }
    (folder / "manifest.json").write_text(json.dumps({"outputs": outputs}))


def write_set(folder: Path, prefix: str, n: dict[str, int], task: str = "text") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        recs = [
            make_record(
                id=f"{prefix}:{split}:{i}",
                source=prefix,
                task=task,
                prompt=f"{prefix} {split} {i}",
                candidates=["a", "b"],
                label=0,
            )
            for i in range(n.get(split, 0))
        ]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    write_manifest(folder)
    return folder


def test_mix_is_exact_deterministic_and_seeded(tmp_path):
    cap = write_set(tmp_path / "cap", "cap", {"train": 100, "val": 12})
    txt = write_set(tmp_path / "txt", "txt", {"train": 40, "val": 2})
    m = mix_datasets([(cap, 4), (txt, 1)], tmp_path / "m1", seed=5)
    assert m["parts"][0]["taken"] == {"train": 100, "val": 8, "test": 0} and m["parts"][1][
        "taken"
    ] == {"train": 25, "val": 2, "test": 0}
    train = load_records(tmp_path / "m1" / "train.jsonl")
    assert Counter(r["source"] for r in train) == {"cap": 100, "txt": 25}
    assert [r["source"] for r in train] != ["cap"] * 100 + ["txt"] * 25  # interleaved
    mix_datasets([(cap, 4), (txt, 1)], tmp_path / "m2", seed=5)
    mix_datasets([(cap, 4), (txt, 1)], tmp_path / "m3", seed=6)
    for s in ("train", "val", "test", "manifest"):
        f = f"{s}.json" if s == "manifest" else f"{s}.jsonl"
        assert (tmp_path / "m1" / f).read_bytes() == (tmp_path / "m2" / f).read_bytes()
    other = load_records(tmp_path / "m3" / "train.jsonl")
    assert {r["id"] for r in other if r["source"] == "txt"} != {
        r["id"] for r in train if r["source"] == "txt"
    }
    # within a part the source order is kept
    txt_ids = [int(r["id"].rsplit(":", 1)[1]) for r in train if r["source"] == "txt"]
    assert txt_ids == sorted(txt_ids)
    sha = m["outputs"]["train.jsonl"]["sha256"]
    import hashlib

    assert sha == hashlib.sha256((tmp_path / "m1" / "train.jsonl").read_bytes()).hexdigest()


def test_mix_counts_repeat_and_errors(tmp_path):
    a = write_set(tmp_path / "a", "a", {"train": 30})
    b = write_set(tmp_path / "b", "b", {"train": 4})
    m = mix_datasets([(a, 20), (b, 10)], tmp_path / "m", by="count", repeat=True)
    recs = load_records(tmp_path / "m" / "train.jsonl")
    assert (
        Counter(r["source"] for r in recs) == {"a": 20, "b": 10}
        and m["parts"][1]["taken"]["val"] == 0
    )
    b_ids = sorted(r["id"] for r in recs if r["source"] == "b")
    assert (
        len(set(b_ids)) == 10
        and sum("#m2" in i for i in b_ids) == 4
        and sum("#m3" in i for i in b_ids) == 2
    )
    assert (tmp_path / "m" / "val.jsonl").read_text() == ""
    with pytest.raises(RmkitError, match="part 2 has 4"):
        mix_datasets([(a, 20), (b, 10)], tmp_path / "m4", by="count")
    with pytest.raises(RmkitError, match="occurs twice"):
        mix_datasets([(a, 1), (a, 1)], tmp_path / "m5")


def test_mix_copies_images_and_cli(tmp_path):
    img = tmp_path / "g" / "images" / "ab"
    img.mkdir(parents=True)
    (img / "x.png").write_bytes(b"\x89PNG fake")
    gen = tmp_path / "g"
    rec = make_record(
        id="g:1",
        source="g",
        task="image_generation",
        prompt="p",
        candidates=["images/ab/x.png", "images/ab/x.png"],
        label=0,
    )
    (gen / "train.jsonl").write_text(json.dumps(rec) + "\n")
    write_manifest(gen)
    txt = write_set(tmp_path / "t", "t", {"train": 3})
    rc = main(
        [
            "build-data",
            "mix",
            "--part",
            f"{gen}=1",
            "--part",
            f"{txt}=2",
            "-o",
            str(tmp_path / "out"),
            "--split",
            "train",
        ]
    )
    assert rc == 0
    assert (tmp_path / "out" / "images" / "ab" / "x.png").read_bytes() == b"\x89PNG fake"
    recs = load_records(tmp_path / "out" / "train.jsonl")
    assert Counter(r["source"] for r in recs) == {"g": 1, "t": 2}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["images"] == {"files": 1} and manifest["parts"][1]["weight"] == 2.0
    assert (
        main(["build-data", "mix", "--part", f"{gen}=1", "-o", str(tmp_path / "o2")]) == 1
    )  # needs two parts
    # a part whose split file no longer matches its manifest is refused, naming the file
    (gen / "train.jsonl").write_text(json.dumps({**rec, "id": "g:2"}) + "\n")
    with pytest.raises(RmkitError, match=r"train\.jsonl.*does not match"):
        mix_datasets([(gen, 1), (txt, 2)], tmp_path / "o3", splits=["train"])
