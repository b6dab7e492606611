"""SECURITY-REVIEW M5 / issue 17 item 4: record image paths stay inside the dataset's image root.

A records file with an absolute path, a ``../`` escape, a symlink pointing outside, or a
``file://`` URL makes distill, eval and caption stop with an error naming the file, line,
record and path, and nothing reaches the (stand-in) API server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest
from tests.helpers.openai_server import OpenAITestServer
from tests.integration.distill.distill_helpers import run_cli

from rmkit.errors import RmkitError


def _png(path: Path, colour: tuple[int, int, int]) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (17, 13), colour).save(path)
    return path


@pytest.fixture
def layout(tmp_path):
    """``data/`` (a dataset with images/ok.png) beside ``secret_outside.png``."""
    secret = _png(tmp_path / "secret_outside.png", (1, 2, 3))
    data = tmp_path / "data"
    _png(data / "images" / "ok.png", (200, 10, 10))
    os.symlink(secret, data / "images" / "link.png")
    return data, secret


def _cases(secret: Path) -> dict[str, str]:
    return {
        "absolute": str(secret),
        "dotdot": "../secret_outside.png",
        "symlink": "images/link.png",
        "file-url": "file://" + str(secret),
    }


def _write(data: Path, ref: str) -> Path:
    rows = [
        {
            "id": f"r{i}",
            "source": "probe",
            "task": "image_understanding",
            "prompt": "What colour?",
            "images": ["images/ok.png" if i == 0 else ref],
            "candidates": ["red", "blue"],
            "label": 0,
            "label_kind": "preferred",
            "meta": {},
        }
        for i in range(2)
    ]
    path = data / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {"outputs": {"train.jsonl": {"records": len(rows), "sha256": digest}}}
    (data / "manifest.json").write_text(json.dumps(manifest))
    return path


def _leaked(srv: OpenAITestServer, secret: Path) -> bool:
    needle = base64.b64encode(secret.read_bytes()).decode()
    return any(needle in json.dumps(r.body) for r in srv.requests)


@pytest.mark.parametrize("case", ["absolute", "dotdot", "symlink", "file-url"])
def test_distill_refuses_image_outside_root_and_uploads_nothing(layout, tmp_path, capsys, case):
    data, secret = layout
    ref = _cases(secret)[case]
    src = _write(data, ref)
    with OpenAITestServer(lambda body: "<think>x</think><answer>1</answer>") as srv:
        args = ["distill", "--input", src, "--base-url", srv.url, "--api-model", "test-model"]
        args += ["--output", tmp_path / "out", "--samples", 1]
        assert run_cli(args) != 0
        assert not _leaked(srv, secret) and not srv.chat_requests()
    err = capsys.readouterr().err
    assert f"{src}:2" in err and "'r1'" in err and ref in err


@pytest.mark.parametrize("case", ["absolute", "dotdot", "symlink", "file-url"])
def test_eval_refuses_image_outside_root_and_uploads_nothing(layout, tmp_path, capsys, case):
    data, secret = layout
    ref = _cases(secret)[case]
    src = _write(data, ref)
    with OpenAITestServer(lambda body: "<think>x</think><answer>1</answer>") as srv:
        args = ["eval", "--benchmark", "records", "--data", data, "--split", "train"]
        args += ["--base-url", srv.url, "--api-model", "test-model", "--output", tmp_path / "e"]
        assert run_cli(args) != 0
        assert not _leaked(srv, secret) and not srv.chat_requests()
    err = capsys.readouterr().err
    assert f"{src}:2" in err and "'r1'" in err and ref in err


@pytest.mark.parametrize("case", ["absolute", "dotdot", "symlink", "file-url"])
def test_caption_refuses_image_outside_dataset(layout, case):
    from rmkit.data.caption import collect_images

    data, secret = layout
    ref = _cases(secret)[case]
    src = _write(data, ref)
    with pytest.raises(RmkitError) as e:
        collect_images(data, ("train",))
    assert f"{src}:2" in str(e.value) and "'r1'" in str(e.value) and ref in str(e.value)


def test_inside_paths_still_work(layout, tmp_path):
    from rmkit.data.images import confine_record_images, resolve_in_roots

    data, _ = layout
    rec = {"id": "ok", "task": "image_understanding", "images": ["images/ok.png"]}
    got = confine_record_images(rec, [data], "x:1")
    assert got == {"images/ok.png": str((data / "images" / "ok.png").resolve())}
    # an absolute path or a '..' that stays inside the root is the same file (build-data rule)
    assert resolve_in_roots(str(data / "images" / "ok.png"), [data]).name == "ok.png"
    assert resolve_in_roots("images/../images/ok.png", [data]).name == "ok.png"


def test_train_refuses_url_image_in_traces(tmp_path):
    from rmkit.training.data import resolve_messages

    msgs = [
        {"role": "user", "content": [{"type": "image", "image": "file:///etc/passwd"}]},
        {"role": "assistant", "content": "x"},
    ]
    with pytest.raises(RmkitError, match="URL"):
        resolve_messages(msgs, tmp_path)
