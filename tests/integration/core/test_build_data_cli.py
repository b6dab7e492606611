"""`rmkit build-data` end to end through the CLI (in-process and as a subprocess)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rmkit.cli.main import main
from rmkit.data.records import load_records, record_problem

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples" / "text"


def hh_rows(n: int, seed: int = 0, dup_every: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = i - 1 if dup_every and i % dup_every == 0 and i else i
        q = (
            f"Question number {k}: what is {k} plus {rng.randint(1, 9)}?"
            if k == i
            else rows[-1]["_q"]
        )
        rows.append(
            {
                "_q": q,
                "chosen": f"\n\nHuman: {q}\n\nAssistant: good answer {k}",
                "rejected": f"\n\nHuman: {q}\n\nAssistant: bad answer {k}",
            }
        )
    for r in rows:
        r.pop("_q")
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def run(*args: str) -> int:
    return main([str(a) for a in args])


def test_balance_splits_and_determinism(tmp_path):
    data = write_jsonl(tmp_path / "in" / "helpful-base" / "train.jsonl", hh_rows(1500))
    assert (
        run(
            "build-data",
            "--format",
            "hh-rlhf",
            "--input",
            data,
            "--output",
            tmp_path / "a",
            "--seed",
            "7",
        )
        == 0
    )
    assert (
        run(
            "build-data",
            "--format",
            "hh-rlhf",
            "--input",
            data,
            "--output",
            tmp_path / "b",
            "--seed",
            "7",
        )
        == 0
    )
    for f in ("train.jsonl", "val.jsonl", "test.jsonl", "manifest.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    splits = {s: load_records(tmp_path / "a" / f"{s}.jsonl") for s in ("train", "val", "test")}
    recs = [r for rs in splits.values() for r in rs]
    assert len(recs) == 1500
    first = sum(r["label"] == 0 for r in recs) / len(recs)
    assert abs(first - 0.5) <= 0.02
    # every record keeps a correct label after the swap
    assert all(r["candidates"][r["label"]].startswith("good") for r in recs)
    assert all(r["source"] == "hh-rlhf/helpful-base" and record_problem(r) is None for r in recs)
    prompts = {s: {json.dumps(r["prompt"]) for r in rs} for s, rs in splits.items()}
    assert (
        not (prompts["train"] & prompts["val"])
        and not (prompts["train"] & prompts["test"])
        and not (prompts["val"] & prompts["test"])
    )
    assert len(splits["val"]) > 30 and len(splits["test"]) > 30  # ~5% each of 1500
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["counts"]["total"] == {s: len(v) for s, v in splits.items()}
    assert manifest["seed"] == 7 and manifest["outputs"]["train.jsonl"]["records"] == len(
        splits["train"]
    )
    import hashlib

    assert (
        manifest["outputs"]["train.jsonl"]["sha256"]
        == hashlib.sha256((tmp_path / "a" / "train.jsonl").read_bytes()).hexdigest()
    )
    # another seed changes positions but not the split of any prompt
    assert (
        run(
            "build-data",
            "--format",
            "hh-rlhf",
            "--input",
            data,
            "--output",
            tmp_path / "c",
            "--seed",
            "8",
        )
        == 0
    )
    other = {
        s: {json.dumps(r["prompt"]) for r in load_records(tmp_path / "c" / f"{s}.jsonl")}
        for s in splits
    }
    assert other == prompts
    assert (tmp_path / "c" / "train.jsonl").read_bytes() != (
        tmp_path / "a" / "train.jsonl"
    ).read_bytes()


def test_duplicates_and_identical_candidates_are_dropped(tmp_path):
    rows = hh_rows(10)
    rows.append(dict(rows[3]))  # exact duplicate
    rows.append(
        {"chosen": "\n\nHuman: same\n\nAssistant: x", "rejected": "\n\nHuman: same\n\nAssistant: x"}
    )
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    assert run("build-data", "-f", "hh-rlhf", "-i", data, "-o", tmp_path / "out") == 0
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sum(m["counts"]["total"].values()) == 10
    assert m["counts"]["dropped"] == {"duplicate": 1, "identical candidates": 1}
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (11, "duplicate"),
        (12, "identical candidates"),
    ]


BAD_ROWS = [
    ("{not json", None, "valid JSON"),
    (json.dumps({"chosen": "\n\nHuman: q\n\nAssistant: a"}), "rejected", "field is missing"),
    (json.dumps({"chosen": 5, "rejected": "x"}), "chosen", "a string"),
]
# a row HH-RLHF legitimately contains (an empty final answer): dropped by the empty_answer filter
EMPTY_ANSWER_ROW = json.dumps(
    {"chosen": "\n\nHuman: q\n\nAssistant: ", "rejected": "\n\nHuman: q\n\nAssistant: b"}
)


@pytest.mark.parametrize("bad,field,expected", BAD_ROWS)
def test_malformed_row_stops_with_file_line_field(tmp_path, capsys, bad, field, expected):
    rows = [json.dumps(r) for r in hh_rows(5)]
    rows.insert(3, bad)
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    assert run("build-data", "-f", "hh-rlhf", "-i", data, "-o", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert f"{data}:4" in err and expected in err and "--on-error skip" in err
    if field:
        assert f"field '{field}'" in err
    assert (
        not (tmp_path / "out" / "train.jsonl").exists()
        and not (tmp_path / "out" / "manifest.json").exists()
    )
    assert list((tmp_path / "out").iterdir()) == []  # no temporary files left behind either


def test_on_error_skip_lists_rejects_and_completes(tmp_path):
    rows = [json.dumps(r) for r in hh_rows(6)]
    for i, bad in enumerate([b for b, _, _ in BAD_ROWS] + [EMPTY_ANSWER_ROW]):
        rows.insert(2 * i + 1, bad)
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    assert (
        run("build-data", "-f", "hh-rlhf", "-i", data, "-o", tmp_path / "out", "--on-error", "skip")
        == 0
    )
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sum(m["counts"]["total"].values()) == 6 and m["counts"]["rejected_rows"] == 4
    assert m["counts"]["dropped"] == {"empty_answer": 1}
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [2, 4, 6, 8]
    assert [r["field"] for r in rejects] == [None, "rejected", "chosen", "chosen"]
    assert all(r["file"] == str(data) for r in rejects)
    assert all(r["reason"].startswith("expected") for r in rejects[:3])
    assert rejects[3]["reason"].startswith("empty_answer")


def test_input_formats_and_multiple_sources_with_cap_and_weight(tmp_path):
    rows = [{"q": f"prompt {i}", "a": f"yes {i}", "b": f"no {i}"} for i in range(50)]
    pq.write_table(pa.Table.from_pylist(rows[:20]), tmp_path / "p.parquet")
    (tmp_path / "p.json").write_text(json.dumps(rows[20:30]))
    with open(tmp_path / "p.csv", "w") as fh:
        fh.write("q,a,b\n" + "".join(f"{r['q']},{r['a']},{r['b']}\n" for r in rows[30:40]))
    import datasets

    # 10 new rows plus 2 exact duplicates of rows the first source converted
    datasets.Dataset.from_list(rows[40:] + rows[:2]).save_to_disk(str(tmp_path / "saved"))
    recipe = tmp_path / "r.yaml"
    cols = "{prompt: q, chosen: a, rejected: b}"
    recipe.write_text(
        "kind: build-data\nseed: 3\nsplits: {train: 1.0, val: 0.0, test: 0.0}\nsources:\n"
        f"  - {{format: pairs, name: par, inputs: [p.parquet, p.json, p.csv], cap: 25, options: {{columns: {cols}}}}}\n"
        f"  - {{format: pairs, name: disk, inputs: [saved], weight: 2.0, options: {{columns: {cols}}}}}\n"
    )
    assert run("build-data", recipe, "--output", tmp_path / "out") == 0
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    recs = load_records(tmp_path / "out" / "train.jsonl")
    par = [r for r in recs if r["source"] == "par"]
    disk = [r for r in recs if r["source"] == "disk"]
    # deduplication runs before caps: the 2 repeated rows are dropped whether or not the cap kept them
    assert len(par) == 25 and m["counts"]["dropped"] == {"duplicate": 2, "over cap": 15}
    assert len({r["prompt"] for r in par}) == 25
    assert len(disk) == 20 and sum(r["id"].endswith("#r2") for r in disk) == 10
    assert [i["rows"] for i in m["inputs"]] == [20, 10, 10, 12]
    assert (tmp_path / "out" / "config.yaml").exists()
    # the cap is a seeded sample: the same seed keeps the same records, another seed others
    assert run("build-data", recipe, "--output", tmp_path / "out2", "seed=4") == 0
    par2 = {
        r["prompt"] for r in load_records(tmp_path / "out2" / "train.jsonl") if r["source"] == "par"
    }
    assert len(par2) == 25 and par2 != {r["prompt"] for r in par}


def test_examples_of_every_text_format_convert(tmp_path):
    cases = {
        "hh-rlhf": EXAMPLES / "hh-rlhf",
        "ultrafeedback": EXAMPLES / "ultrafeedback",
        "skywork": EXAMPLES / "skywork",
        "helpsteer3": EXAMPLES / "helpsteer3" / "preference" / "train.jsonl",
        "rewardbench": EXAMPLES / "rewardbench" / "filtered.jsonl",
    }
    for fmt, path in cases.items():
        out = tmp_path / fmt
        assert run("build-data", "-f", fmt, "-i", path, "-o", out) == 0, fmt
        recs = [r for s in ("train", "val", "test") for r in load_records(out / f"{s}.jsonl")]
        assert len(recs) >= 10, fmt
    assert (
        run(
            "build-data",
            "-f",
            "rewardbench",
            "-i",
            EXAMPLES / "rewardbench2" / "test.jsonl",
            "-o",
            tmp_path / "rb2",
        )
        == 0
    )
    rb2 = [
        r for s in ("train", "val", "test") for r in load_records(tmp_path / "rb2" / f"{s}.jsonl")
    ]
    assert all(len(r["candidates"]) == 4 for r in rb2)
    assert (
        run(
            "build-data",
            "-f",
            "pairs",
            "-i",
            EXAMPLES / "pairs" / "pairs.csv",
            "--column",
            "prompt=question",
            "--column",
            "chosen=good_answer",
            "--column",
            "rejected=bad_answer",
            "-o",
            tmp_path / "csv",
        )
        == 0
    )


def test_hub_id_offline_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (
        run("build-data", "-f", "hh-rlhf", "-i", "Anthropic/hh-rlhf", "-o", tmp_path / "out") == 1
    )
    err = capsys.readouterr().err
    assert "hub" in err and "local folder" in err


def test_missing_input_and_usage_errors(tmp_path, capsys):
    assert (
        run("build-data", "-f", "hh-rlhf", "-i", tmp_path / "nope.jsonl", "-o", tmp_path / "o") == 1
    )
    assert "input not found" in capsys.readouterr().err
    assert run("build-data", "--bogus-option") == 2
    assert run("build-data", "-f", "nosuch", "-i", tmp_path, "-o", tmp_path / "o") == 1
    assert "unknown format 'nosuch'" in capsys.readouterr().err


def test_dry_run_prints_resolved_config(tmp_path, capsys):
    assert (
        run(
            "build-data",
            "-f",
            "hh-rlhf",
            "-i",
            "x.jsonl",
            "-o",
            tmp_path / "o",
            "--dry-run",
            "seed=5",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "seed: 5" in out and "format: hh-rlhf" in out
    assert not (tmp_path / "o").exists()


def _staged(parent: Path) -> list[Path]:
    """Files a running build is writing (in its staging folder next to the output)."""
    return list(parent.glob(".rmkit-build-out.*/.rmkit-tmp-*"))


def _start_on_fifo(tmp_path: Path) -> tuple[subprocess.Popen, object, Path]:
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    env = {**os.environ, "RMKIT_NO_PROGRESS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rmkit",
            "build-data",
            "-f",
            "hh-rlhf",
            "-i",
            str(fifo),
            "-o",
            str(out),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    fh = open(fifo, "w")  # noqa: SIM115 - closed by the caller
    for r in hh_rows(200):
        fh.write(json.dumps(r) + "\n")
    fh.flush()
    deadline = time.monotonic() + 60
    while not _staged(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let it convert what was written
    return proc, fh, out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_build_leaves_no_partial_outputs(tmp_path, sig):
    proc, fh, out = _start_on_fifo(tmp_path)
    assert _staged(tmp_path), "the build did not start writing"
    proc.send_signal(sig)
    proc.wait(timeout=30)
    with contextlib.suppress(BrokenPipeError):
        fh.close()
    finals = {p.name for p in out.iterdir() if not p.name.startswith(".rmkit-tmp-")}
    finals.discard(".rmkit.lock")  # a killed run's lock record (taken over by the rerun)
    assert finals == set(), finals
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert not list(tmp_path.glob(".rmkit-build-*"))  # cleaned up on the way out
    # a rerun on a complete input cleans leftovers and succeeds
    data = write_jsonl(tmp_path / "full.jsonl", hh_rows(50))
    assert run("build-data", "-f", "hh-rlhf", "-i", data, "-o", out) == 0
    assert not any(out.glob(".rmkit-tmp-*")) and (out / "manifest.json").exists()
    assert not list(tmp_path.glob(".rmkit-build-*"))  # a killed run's staging folder is removed
