"""Record validation messages and atomic writes."""

from __future__ import annotations

import json

import pytest

from rmkit.data.records import (
    load_records,
    make_record,
    record_problem,
    trace_problem,
    write_records,
)
from rmkit.errors import DataError, RmkitError
from rmkit.utils.io import atomic_open


def rec(**kw):
    base = make_record(
        id="s:1", source="s", task="text", prompt="p", candidates=["a", "b"], label=1
    )
    base.update(kw)
    return base


@pytest.mark.parametrize(
    "change,field",
    [
        ({"id": ""}, "id"),
        ({"task": "audio"}, "task"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": [{"role": "bot", "content": "x"}]}, "prompt"),
        ({"candidates": ["a"]}, "candidates"),
        ({"candidates": ["a", " "]}, "candidates[1]"),
        ({"label": 2}, "label"),
        ({"label": True}, "label"),
        ({"label": None}, "label"),
        ({"label_kind": "tie"}, "label"),
        ({"images": [3]}, "images"),
        ({"meta": []}, "meta"),
    ],
)
def test_record_problems_name_the_field(change, field):
    problem = record_problem(rec(**change))
    assert problem is not None and problem[0] == field


def test_valid_records_and_ties():
    assert record_problem(rec()) is None
    assert record_problem(rec(label=None, label_kind="tie")) is None
    assert (
        record_problem(
            rec(
                prompt=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "q"},
                            {"type": "image", "image": "images/a.png"},
                        ],
                    }
                ]
            )
        )
        is None
    )


def test_trace_problem():
    ok = {
        "id": "t",
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
    }
    assert trace_problem(ok) is None
    assert trace_problem({**ok, "messages": ok["messages"][:1]})[0] == "messages"


def test_reader_names_file_line_and_field(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps(rec()) + "\n\n" + json.dumps(rec(label=5)) + "\n")
    with pytest.raises(DataError) as e:
        load_records(p)
    assert e.value.line == 3 and e.value.field == "label" and str(p) in e.value.message
    with pytest.raises(RmkitError, match="not found"):
        load_records(tmp_path / "missing.jsonl")


def test_write_records_round_trip_and_atomic_on_error(tmp_path):
    p = tmp_path / "out.jsonl"
    assert write_records(p, [rec(), rec(id="s:2")]) == 2
    assert [r["id"] for r in load_records(p)] == ["s:1", "s:2"]

    def boom():
        yield rec(id="s:3")
        raise RuntimeError("fail mid-write")

    with pytest.raises(RuntimeError):
        write_records(p, boom())
    assert [r["id"] for r in load_records(p)] == ["s:1", "s:2"]  # the old file is untouched
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out.jsonl"]  # no temporary left


def test_atomic_open_text_mode(tmp_path):
    with atomic_open(tmp_path / "a.txt", "w") as fh:
        fh.write("héllo")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo"


def test_hashing_writer_and_file_sha256_agree_with_hashlib(tmp_path):
    import hashlib

    from rmkit.utils.io import HashingWriter, file_sha256

    lines = [b'{"a":1}\n', b'{"b":2}\n', b"x" * (3 << 20) + b"\n"]  # one line over a read block
    path = tmp_path / "out.jsonl"
    with open(path, "wb") as fh:
        w = HashingWriter(fh)
        for line in lines:
            w.write(line)
    want = hashlib.sha256(b"".join(lines)).hexdigest()
    assert w.n == 3 and w.sha.hexdigest() == want
    assert path.read_bytes() == b"".join(lines)
    assert file_sha256(path) == want
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
