"""SECURITY-REVIEW M5 for training: trace and record image paths stay inside the allowed roots.

The roots are ``data.image_root`` (when set), the records file's folder, and the folders a
distill run recorded in ``image_roots.json`` beside its traces. A trace folder written by
``rmkit distill`` (whose paths point back into the dataset it read, ``../../data/images/...``)
loads; a hand-written trace with an absolute path, a ``../`` escape or a symlink leading
outside stops before any model is loaded, with an error naming the file, line, record and path.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from tests.helpers.openai_server import OpenAITestServer, last_user_text
from tests.integration.distill.distill_helpers import run_cli
from tests.integration.train.train_helpers import TINY

from rmkit.errors import RmkitError
from rmkit.training.data import image_roots, load_training_records, resolve_messages


def _png(path: Path, colour: tuple[int, int, int]) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (17, 13), colour).save(path)
    return path


def _trace(ref: str, rid: str = "t0") -> dict:
    return {
        "id": rid,
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": ref}, {"type": "text", "text": "?"}]},
            {"role": "assistant", "content": "<answer>1</answer>"},
        ],
        "images": [ref],
    }  # fmt: skip


def _write_traces(folder: Path, traces: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "traces.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in traces))
    return path


@pytest.fixture
def layout(tmp_path):
    """``traces/`` (with its own ``img/ok.png``) beside ``secret_outside.png``."""
    secret = _png(tmp_path / "secret_outside.png", (1, 2, 3))
    traces = tmp_path / "traces"
    _png(traces / "img" / "ok.png", (200, 10, 10))
    os.symlink(secret, traces / "img" / "link.png")
    return traces, secret


def _escapes(secret: Path) -> dict[str, str]:
    return {"absolute": str(secret), "dotdot": "../secret_outside.png", "symlink": "img/link.png"}


@pytest.mark.parametrize("case", ["absolute", "dotdot", "symlink"])
def test_train_refuses_trace_image_outside_the_roots(layout, case):
    traces, secret = layout
    ref = _escapes(secret)[case]
    path = _write_traces(traces, [_trace("img/ok.png", "t0"), _trace(ref, "t1")])
    with pytest.raises(RmkitError) as e:
        load_training_records(str(path), "train", "sft")
    msg = str(e.value)
    assert f"{path}:2" in msg and "'t1'" in msg and repr(ref) in msg
    assert "outside the allowed image roots" in msg


@pytest.mark.parametrize("case", ["absolute", "dotdot", "symlink"])
def test_train_refuses_rl_record_image_outside_the_roots(layout, case):
    traces, secret = layout
    ref = _escapes(secret)[case]
    rec = {
        "id": "r0", "source": "t", "task": "image_understanding", "prompt": "What colour?",
        "images": [ref], "candidates": ["red", "blue"], "label": 0, "label_kind": "preferred",
        "meta": {},
    }  # fmt: skip
    path = traces / "prefs.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(RmkitError, match=re.escape(f"{path}:1: record 'r0': image {ref!r}")):
        load_training_records(str(path), "train", "rl")


def test_rmkit_train_stops_on_an_escaping_trace_before_loading_a_model(layout, tmp_path, capsys):
    from rmkit.cli.main import main

    traces, secret = layout
    path = _write_traces(traces, [_trace(str(secret))])
    rc = main(["train", str(TINY / "sft.yaml"), "--output", str(tmp_path / "run"),
               f"data.path={path}"])  # fmt: skip
    assert rc != 0
    err = capsys.readouterr().err
    assert f"{path}:1" in err and str(secret) in err and "outside the allowed image roots" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_inside_paths_and_data_image_root_resolve_to_real_paths(layout, tmp_path):
    traces, _ = layout
    other = tmp_path / "other"
    _png(other / "x.png", (5, 5, 5))
    path = _write_traces(traces, [_trace("img/ok.png", "t0"), _trace("x.png", "t1")])
    with pytest.raises(RmkitError, match="not found under the image roots"):
        load_training_records(str(path), "train", "sft")  # x.png is not in the trace folder
    records, _ = load_training_records(str(path), "train", "sft", image_root=str(other))
    shown = [r["messages"][0]["content"][0]["image"] for r in records]
    assert shown == [str((traces / "img" / "ok.png").resolve()), str((other / "x.png").resolve())]
    assert records[1]["images"] == [shown[1]]
    roots = image_roots(path, str(other))
    assert resolve_messages(records[1]["messages"], roots)[0]["content"][0]["image"] == shown[1]
    with pytest.raises(RmkitError, match="outside the allowed image roots"):
        resolve_messages(records[1]["messages"], [traces])  # the same path, other roots


def _teacher(body: dict) -> str:
    """Picks the shown position of the 'red' candidate."""
    m = re.search(r"\[Response (\d)\]\s*red", last_user_text(body))
    assert m, "prompt does not show the red candidate"
    return f"<think>red it is</think><answer>{m.group(1)}</answer>"


def test_distill_written_traces_point_outside_their_folder_and_still_load(tmp_path):
    data = tmp_path / "data"
    _png(data / "images" / "ok.png", (200, 10, 10))
    rows = [
        {"id": f"r{i}", "source": "probe", "task": "image_understanding", "prompt": "What colour?",
         "images": ["images/ok.png"], "candidates": ["red", "blue"], "label": 0,
         "label_kind": "preferred", "meta": {}}
        for i in range(2)
    ]  # fmt: skip
    src = data / "train.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "runs" / "distill"
    with OpenAITestServer(_teacher) as srv:
        args = ["distill", "--input", src, "--base-url", srv.url, "--api-model", "m"]
        assert run_cli([*args, "--output", out, "--samples", 1]) == 0
    assert json.loads((out / "image_roots.json").read_text()) == {"image_roots": ["../../data"]}
    traces = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 2 and traces[0]["images"] == ["../../data/images/ok.png"]
    records, _ = load_training_records(str(out / "traces.jsonl"), "train", "sft")
    real = str((data / "images" / "ok.png").resolve())
    for rec in records:
        assert rec["images"] == [real]
        msgs = resolve_messages(rec["messages"], image_roots(out / "traces.jsonl"))
        parts = [p for m in msgs if isinstance(m["content"], list) for p in m["content"]]
        assert [p["image"] for p in parts if p["type"] == "image"] == [real]
    # without the recorded roots, the same traces escape their folder
    (out / "image_roots.json").unlink()
    with pytest.raises(RmkitError, match="outside the allowed image roots"):
        load_training_records(str(out / "traces.jsonl"), "train", "sft")
