"""build-data hardening (SECURITY-REVIEW L2, L3, L4, L9 and issue 17 item 8): each test feeds
the review's input and checks the intended behaviour."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rmkit.cli.main import main
from rmkit.data import build as build_mod
from rmkit.data import staging as staging_mod
from rmkit.data.manifest import dataset_file, verify_manifest
from rmkit.data.readers import iter_rows
from rmkit.errors import RmkitError
from rmkit.utils.io import iter_jsonl, read_json

REAL_HH = Path(__file__).resolve().parents[4] / "shared/data/real/hh-rlhf"
BOM = b"\xef\xbb\xbf"


def run(*args) -> int:
    return main([str(a) for a in args])


def hh(i: int, chosen: str | None = None, rejected: str | None = None) -> dict:
    q = f"\n\nHuman: question {i}: what is {i} plus {i}?\n\nAssistant:"
    return {
        "chosen": q + (f" good answer {i}" if chosen is None else chosen),
        "rejected": q + (f" bad answer {i}" if rejected is None else rejected),
    }


def write_jsonl(path: Path, rows: list, prefix: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_bytes(prefix + "".join(x + "\n" for x in lines).encode())
    return path


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (except the lock) and its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".rmkit.lock"
    }


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


# -- item 8: rows a source legitimately contains are a named, counted filter ---------------------
def test_empty_answer_is_a_named_counted_filter_not_an_error(tmp_path, capsys):
    rows = [hh(i) for i in range(10)]
    rows.insert(3, hh(100, chosen=" "))  # HH-RLHF: the final 'Assistant:' turn is empty
    rows.insert(7, hh(101, rejected=""))
    data = write_jsonl(tmp_path / "in" / "data.jsonl", rows)
    assert run("build-data", "-f", "hh-rlhf", "-i", data, "-o", tmp_path / "out") == 0
    m = manifest(tmp_path / "out")
    assert sum(m["counts"]["total"].values()) == 10
    assert m["counts"]["dropped"] == {"empty_answer": 2}
    out = capsys.readouterr().out
    assert "empty_answer" in out and "dropped by filters" in out  # in the summary tables
    rejects = list(iter_jsonl(tmp_path / "out" / "rejects.jsonl"))
    assert [(r["line"], r["field"]) for _, r in rejects] == [(4, "chosen"), (8, "rejected")]
    assert all(r["reason"].startswith("empty_answer:") for _, r in rejects)
    # the strict mode still exists, as a choice
    assert (
        run(
            "build-data",
            "-f",
            "hh-rlhf",
            "-i",
            data,
            "-o",
            tmp_path / "strict",
            "filters.empty_answer=error",
        )
        == 1
    )
    err = capsys.readouterr().err
    assert f"{data}:4" in err and "field 'chosen'" in err and "non-empty answer" in err


@pytest.mark.parametrize(
    "fmt,row",
    [
        ("ultrafeedback", {"prompt": "p", "chosen": "", "rejected": "r"}),
        ("pairs", {"prompt": "p", "chosen": "c", "rejected": "  "}),
        ("rewardbench", {"prompt": "p", "chosen": "", "rejected": "r"}),
        (
            "helpsteer3",
            {
                "context": [{"role": "user", "content": "p"}],
                "response1": "",
                "response2": "b",
                "overall_preference": -2,
            },
        ),
    ],
)
def test_other_converters_drop_empty_answers_too(tmp_path, fmt, row):
    good = {**row}
    for k in ("chosen", "rejected", "response1", "response2"):
        if k in good:
            good[k] = f"{k} text"
    data = write_jsonl(tmp_path / "in.jsonl", [good, row])
    assert run("build-data", "-f", fmt, "-i", data, "-o", tmp_path / "out") == 0
    m = manifest(tmp_path / "out")
    assert m["counts"]["dropped"] == {"empty_answer": 1}
    assert sum(m["counts"]["total"].values()) == 1


def test_malformed_rows_stay_errors(tmp_path, capsys):
    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": " ", "chosen": "c", "rejected": "r"}])
    assert run("build-data", "-f", "pairs", "-i", data, "-o", tmp_path / "out") == 1
    assert "field 'prompt'" in capsys.readouterr().err  # an empty prompt is not an answer


@pytest.mark.skipif(
    not (REAL_HH / "harmless-base" / "test.jsonl.gz").is_file(),
    reason="real HH-RLHF harmless-base test file not available",
)
def test_real_hh_rlhf_harmless_base_converts_with_defaults(tmp_path):
    out = tmp_path / "out"
    assert run("build-data", "--format", "hh-rlhf", "--input", REAL_HH, "--output", out) == 0
    m = manifest(out)
    assert sum(m["counts"]["total"].values()) == 2308
    assert m["counts"]["dropped"] == {"empty_answer": 4}
    assert m["preferred_first_fraction"]["all"] == pytest.approx(0.5, abs=0.001)
    assert list(m["counts"]["by_source"]) == ["hh-rlhf/harmless-base"]
    first = tree(out)
    assert run("build-data", "--format", "hh-rlhf", "--input", REAL_HH, "--output", out) == 0
    assert tree(out) == first  # byte-identical on rerun
    with gzip.open(REAL_HH / "harmless-base" / "test.jsonl.gz") as fh:
        assert sum(1 for _ in fh) == 2312


# -- L2: unique ids after de-duplication ---------------------------------------------------------
def test_ids_stay_unique_when_suffixes_collide(tmp_path):
    rows = [  # the review's dupid2.jsonl: ids r0, r0, r0#2 (distinct content)
        {"id": "r0", "prompt": "p0", "chosen": "a0", "rejected": "b0"},
        {"id": "r0", "prompt": "p1", "chosen": "a1", "rejected": "b1"},
        {"id": "r0#2", "prompt": "p2", "chosen": "a2", "rejected": "b2"},
        {"id": "r0#2", "prompt": "p3", "chosen": "a3", "rejected": "b3"},
    ]
    data = write_jsonl(tmp_path / "dupid2.jsonl", rows)
    assert run("build-data", "-f", "pairs", "-i", data, "-o", tmp_path / "out") == 0
    ids = [
        r["id"]
        for s in ("train", "val", "test")
        for _, r in iter_jsonl(tmp_path / "out" / f"{s}.jsonl")
    ]
    assert len(ids) == 4 and len(set(ids)) == 4, ids
    assert {"pairs:r0", "pairs:r0#2"} <= set(ids)
    # weighted repeats (#r2) cannot collide with a source id either
    rows2 = [
        {"id": "x", "prompt": "q0", "chosen": "a", "rejected": "b"},
        {"id": "x#r2", "prompt": "q1", "chosen": "a", "rejected": "b"},
    ]
    write_jsonl(tmp_path / "w.jsonl", rows2)
    (tmp_path / "r.yaml").write_text(
        "kind: build-data\nsources:\n  - {format: pairs, inputs: [w.jsonl], weight: 2.0}\n"
    )
    assert run("build-data", tmp_path / "r.yaml", "-o", tmp_path / "w") == 0
    ids = [
        r["id"]
        for s in ("train", "val", "test")
        for _, r in iter_jsonl(tmp_path / "w" / f"{s}.jsonl")
    ]
    assert len(ids) == 4 and len(set(ids)) == 4, ids


# -- L3: one atomic commit; readers check the manifest -------------------------------------------
def _build(tmp_path: Path, n: int, out: Path) -> None:
    data = write_jsonl(tmp_path / f"in{n}" / "d.jsonl", [hh(i) for i in range(n)])
    assert (
        run(
            "build-data",
            "-f",
            "hh-rlhf",
            "-i",
            data,
            "-o",
            out,
            "splits.train=0.5",
            "splits.val=0.25",
            "splits.test=0.25",
        )
        == 0
    )


@pytest.mark.parametrize("where", ["before-manifest", "at-swap"])
def test_a_build_killed_during_commit_leaves_the_previous_build_intact(
    tmp_path, monkeypatch, where
):
    out = tmp_path / "out"
    _build(tmp_path, 40, out)
    before = tree(out)

    class Killed(BaseException):  # like SIGKILL: not an Exception, nothing catches it
        pass

    def die(*a, **k):
        raise Killed

    if where == "before-manifest":  # split files written, manifest not yet
        monkeypatch.setattr(build_mod, "write_json_atomic", die)
    else:  # everything staged, killed at the swap
        monkeypatch.setattr(staging_mod, "exchange_dirs", die)
    data = write_jsonl(tmp_path / "new" / "d.jsonl", [hh(i + 1000) for i in range(30)])
    with pytest.raises(Killed):
        build_mod.build_data(
            build_mod.BuildDataConfig(sources=[{"format": "hh-rlhf", "inputs": [str(data)]}]),
            out,
        )
    assert tree(out) == before  # all old: no split file of the new build got in
    verify_manifest(out)
    monkeypatch.undo()
    assert run("build-data", "-f", "hh-rlhf", "-i", data, "-o", out) == 0
    assert sum(manifest(out)["counts"]["total"].values()) == 30
    assert not list(tmp_path.glob(".rmkit-build-*"))  # staging leftovers removed
    verify_manifest(out)


def test_commit_without_atomic_exchange_still_replaces_the_whole_folder(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _build(tmp_path, 40, out)
    monkeypatch.setattr(staging_mod, "exchange_dirs", lambda a, b: False)
    _build(tmp_path, 12, out)
    assert sum(manifest(out)["counts"]["total"].values()) == 12
    verify_manifest(out)
    assert not list(tmp_path.glob(".rmkit-build-*"))


def test_rebuild_keeps_hidden_rmkit_files_and_the_lock_holds(tmp_path):
    out = tmp_path / "out"
    _build(tmp_path, 20, out)
    (out / ".rmkit-stage.json").write_text("{}")  # a pipeline marker
    _build(tmp_path, 21, out)
    assert (out / ".rmkit-stage.json").read_text() == "{}"
    assert not (out / ".rmkit.lock").exists()  # released


def test_readers_detect_a_tampered_or_mixed_folder(tmp_path):
    out = tmp_path / "out"
    _build(tmp_path, 40, out)
    assert verify_manifest(out)["counts"]["total"]["train"] > 0
    assert dataset_file(out, "val") == out / "val.jsonl"
    assert dataset_file(out / "val.jsonl", "train") == out / "val.jsonl"  # a file is used as is
    # same size, other bytes (a file from another build or edited)
    data = bytearray((out / "val.jsonl").read_bytes())
    data[10:11] = b"X" if data[10:11] != b"X" else b"Y"
    (out / "val.jsonl").write_bytes(bytes(data))
    with pytest.raises(RmkitError, match=r"val\.jsonl: SHA-256 .* does not match"):
        verify_manifest(out)
    with pytest.raises(RmkitError, match=r"val\.jsonl"):
        dataset_file(out, "val")
    dataset_file(out, "train")  # the untouched split still loads
    # truncated
    (out / "test.jsonl").write_bytes((out / "test.jsonl").read_bytes()[:-5])
    with pytest.raises(RmkitError, match=r"test\.jsonl: .* bytes, but"):
        verify_manifest(out, ["test.jsonl"])
    with pytest.raises(RmkitError, match="no split 'dev'"):
        dataset_file(out, "dev")
    (out / "manifest.json").unlink()  # an interrupted old-style build
    with pytest.raises(RmkitError, match="no manifest.json"):
        verify_manifest(out)
    assert verify_manifest(out, require=False) is None


# -- L4: --output vs inputs ----------------------------------------------------------------------
def test_output_equal_to_the_input_folder_is_refused_before_writing(tmp_path, capsys):
    inplace = tmp_path / "inplace"  # the review: cp good.jsonl inplace/train.jsonl; -o inplace
    src = write_jsonl(
        inplace / "train.jsonl",
        [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(6)],
    )
    original = src.read_bytes()
    assert run("build-data", "-f", "pairs", "-i", src, "-o", inplace) == 1
    err = capsys.readouterr().err
    assert "contains the input" in err and str(src) in err
    assert src.read_bytes() == original and sorted(p.name for p in inplace.iterdir()) == [
        "train.jsonl"
    ]
    assert not list(tmp_path.glob(".rmkit-build-*"))
    # the input folder itself as the output, and an output inside an input folder
    assert run("build-data", "-f", "pairs", "-i", inplace, "-o", inplace) == 1
    assert "contains the input" in capsys.readouterr().err
    assert run("build-data", "-f", "pairs", "-i", inplace, "-o", inplace / "built") == 1
    assert "lies inside the input folder" in capsys.readouterr().err
    assert not (inplace / "built").exists() and src.read_bytes() == original


def test_output_holding_other_files_is_refused(tmp_path, capsys):
    data = write_jsonl(tmp_path / "in" / "d.jsonl", [hh(i) for i in range(5)])
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert run("build-data", "-f", "hh-rlhf", "-i", data, "-o", out) == 1
    assert "notes.txt" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


# -- L9: BOM accepted, null named as null --------------------------------------------------------
def test_utf8_bom_is_accepted_in_jsonl_json_and_csv(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(4)]
    jl = write_jsonl(tmp_path / "bom.jsonl", rows, prefix=BOM)
    js = tmp_path / "bom.json"
    js.write_bytes(BOM + json.dumps(rows).encode())
    csv = tmp_path / "bom.csv"
    csv.write_bytes(
        BOM + b"prompt,chosen,rejected\n" + b"".join(f"p{i},a,b\n".encode() for i in range(4))
    )
    for f in (jl, js, csv):
        got = [row for _, _, row in iter_rows(str(f))]
        assert got == [{k: str(v) for k, v in r.items()} for r in rows], f
        assert (
            run("build-data", "-f", "pairs", "-i", f, "-o", tmp_path / f"out-{f.suffix[1:]}") == 0
        )
    assert [r for _, r in iter_jsonl(jl)] == rows
    js2 = tmp_path / "obj.json"
    js2.write_bytes(BOM + b'{"a": 1}')
    assert read_json(js2) == {"a": 1}


@pytest.mark.parametrize(
    "fmt,row,field",
    [
        ("hh-rlhf", {"chosen": None, "rejected": "\n\nHuman: q\n\nAssistant: b"}, "chosen"),
        ("pairs", {"prompt": "p", "chosen": "a", "rejected": None}, "rejected"),
        ("ultrafeedback", {"prompt": None, "chosen": "a", "rejected": "b"}, "prompt"),
    ],
)
def test_null_field_is_reported_as_null_not_missing(tmp_path, capsys, fmt, row, field):
    data = write_jsonl(tmp_path / "wrongtype.jsonl", [row])
    assert run("build-data", "-f", fmt, "-i", data, "-o", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert f"{data}:1: field '{field}' is null; expected a" in err and "missing" not in err
    # skip mode lists it the same way
    assert (
        run("build-data", "-f", fmt, "-i", data, "-o", tmp_path / "o2", "--on-error", "skip") == 0
    )
    ((_, rej),) = iter_jsonl(tmp_path / "o2" / "rejects.jsonl")
    assert rej["field"] == field and rej["reason"].startswith("is null; expected")
    # a field that is really absent is still "missing"
    absent = {k: v for k, v in row.items() if k != field}
    write_jsonl(data, [absent])
    assert run("build-data", "-f", fmt, "-i", data, "-o", tmp_path / "o3") == 1
    assert "field is missing" in capsys.readouterr().err


def test_a_failed_build_leaves_the_previous_build_intact(tmp_path):
    """A failed build (a bad row) leaves the previous build complete and verified."""
    out = tmp_path / "out"
    _build(tmp_path, 30, out)
    before = tree(out)
    bad = write_jsonl(tmp_path / "bad" / "d.jsonl", [hh(1), "{not json"])
    assert run("build-data", "-f", "hh-rlhf", "-i", bad, "-o", out) == 1
    assert tree(out) == before
    verify_manifest(out)
    assert not list(tmp_path.glob(".rmkit-build-*"))
