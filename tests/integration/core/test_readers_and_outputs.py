"""SECURITY-REVIEW L3 and L4 outside build-data.

L3: train, eval (``benchmark: records``) and distill given a dataset *folder* check its split
file against ``manifest.json`` before reading it, so a split edited after the build is refused
with an error naming the file (a direct ``.jsonl`` path is used as is).

L4: distill, eval, ``build-data caption`` and ``mix`` refuse an ``--output`` that is, contains
or lies inside an input folder, before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from tests.helpers.openai_server import OpenAITestServer
from tests.integration.distill.distill_helpers import run_cli, text_records
from tests.integration.train.train_helpers import TINY

from rmkit.errors import RmkitError

ANSWER = "<think>x</think><answer>1</answer>"


def dataset(folder: Path, n: int = 3) -> Path:
    """A dataset folder: ``train.jsonl`` of ``n`` text records and a matching manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in text_records(n)))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(
        json.dumps({"outputs": {"train.jsonl": {"records": n, "sha256": digest}}})
    )
    return folder


def tamper(folder: Path) -> Path:
    """Edit the split file after the build (same size: one label flipped)."""
    path = folder / "train.jsonl"
    path.write_text(path.read_text().replace('"label": 0', '"label": 1', 1))
    return path


# ----------------------------------------------------------------------------- L3 readers


def test_train_refuses_a_split_edited_after_the_build(tmp_path, capsys):
    from rmkit.cli.main import main

    data = dataset(tmp_path / "data")
    edited = tamper(data)
    args = ["train", str(TINY / "grpo.yaml"), "--output", str(tmp_path / "run")]
    assert main([*args, f"data.path={data}", "data.split=train"]) != 0
    err = capsys.readouterr().err
    assert f"{edited}: SHA-256" in err and "does not match" in err
    # the file itself is used as is
    from rmkit.training.data import records_file

    assert records_file(str(edited), "train") == edited


def test_eval_refuses_a_split_edited_after_the_build(tmp_path, capsys):
    edited = tamper(dataset(tmp_path / "data"))
    with OpenAITestServer(lambda body: ANSWER) as srv:
        args = ["eval", "--benchmark", "records", "--data", tmp_path / "data", "--split", "train"]
        args += ["--base-url", srv.url, "--api-model", "m", "--output", tmp_path / "e"]
        assert run_cli(args) != 0
        assert not srv.chat_requests()
    err = capsys.readouterr().err
    assert f"{edited}: SHA-256" in err and "does not match" in err


def test_distill_refuses_a_split_edited_after_the_build(tmp_path, capsys):
    edited = tamper(dataset(tmp_path / "data"))
    with OpenAITestServer(lambda body: ANSWER) as srv:
        args = ["distill", "--input", tmp_path / "data", "--base-url", srv.url]
        args += ["--api-model", "m", "--output", tmp_path / "d", "--samples", 1]
        assert run_cli(args) != 0
        assert not srv.chat_requests()
    err = capsys.readouterr().err
    assert f"{edited}: SHA-256" in err and "does not match" in err


def test_a_folder_without_manifest_is_refused_by_the_readers(tmp_path):
    from rmkit.distill.inputs import input_file
    from rmkit.eval.benchmarks.records import records_file as eval_file
    from rmkit.training.data import records_file as train_file

    data = dataset(tmp_path / "data")
    (data / "manifest.json").unlink()
    for read in (
        lambda: train_file(str(data), "train"),
        lambda: eval_file(data, "train"),
        lambda: input_file(data, "train"),
    ):
        with pytest.raises(RmkitError, match="no manifest.json"):
            read()
    assert input_file(data / "train.jsonl") == data / "train.jsonl"


# ----------------------------------------------------------------------------- L4 outputs


def test_distill_refuses_an_output_inside_or_equal_to_its_input(tmp_path, capsys):
    data = dataset(tmp_path / "data")
    before = sorted(p.name for p in data.iterdir())
    with OpenAITestServer(lambda body: ANSWER) as srv:
        base = ["distill", "--base-url", srv.url, "--api-model", "m", "--samples", 1]
        assert run_cli([*base, "--input", data, "--output", data / "out"]) != 0
        assert "lies inside the input folder" in capsys.readouterr().err
        assert run_cli([*base, "--input", data / "train.jsonl", "--output", data]) != 0
        assert "contains the input" in capsys.readouterr().err
        assert not srv.chat_requests()
    assert sorted(p.name for p in data.iterdir()) == before  # nothing written


def test_eval_refuses_an_output_inside_its_data_folder(tmp_path, capsys):
    data = dataset(tmp_path / "data")
    with OpenAITestServer(lambda body: ANSWER) as srv:
        args = ["eval", "--benchmark", "records", "--data", data, "--split", "train"]
        args += ["--base-url", srv.url, "--api-model", "m", "--output", data / "eval"]
        assert run_cli(args) != 0
        assert not srv.chat_requests()
    assert "lies inside the input folder" in capsys.readouterr().err
    assert not (data / "eval").exists()


def test_caption_refuses_an_output_inside_its_dataset(tmp_path):
    from rmkit.data.caption import caption_dataset

    data = dataset(tmp_path / "data")
    with pytest.raises(RmkitError, match="lies inside the input folder"):
        caption_dataset(data, data / "captioned", backend=None, model="m")
    with pytest.raises(RmkitError, match="contains the input"):
        caption_dataset(data, tmp_path, backend=None, model="m")
    assert not (data / "captioned").exists()


def test_mix_refuses_an_output_inside_a_part(tmp_path):
    from rmkit.data.mix import mix_datasets

    a, b = dataset(tmp_path / "a"), dataset(tmp_path / "b")
    with pytest.raises(RmkitError, match="lies inside the input folder"):
        mix_datasets([(a, 1), (b, 1)], a / "mix")
    with pytest.raises(RmkitError, match="contains the input"):
        mix_datasets([(a / "train.jsonl", 1), (b, 1)], a)
    assert not (a / "mix").exists()
