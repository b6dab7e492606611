"""`rmkit build-data caption` against a local OpenAI-compatible server and a tiny local VLM."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from tests.helpers.openai_server import OpenAITestServer

from rmkit.cli.main import main
from rmkit.data.images import record_image_refs
from rmkit.data.records import load_records, record_problem

REPO = Path(__file__).resolve().parents[3]


def make_dataset(tmp_path: Path, n: int) -> Path:
    """A built image-understanding dataset with ``n`` distinct images (RLAIF-V layout, by path)."""
    src = tmp_path / "src"
    (src / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (28 + i, 28), ((i * 40) % 256, (i * 85) % 256, (i * 15) % 256)).save(
            buf, format="PNG"
        )
        (src / "img" / f"{i}.png").write_bytes(buf.getvalue())
        rows.append(
            {
                "question": f"What is in picture {i}?",
                "chosen": f"colour {i}",
                "rejected": f"shape {i}",
                "image": f"img/{i}.png",
            }
        )
    (src / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "built"
    assert (
        main(
            [
                "build-data",
                "-f",
                "rlaif-v",
                "-i",
                str(src / "rows.jsonl"),
                "-o",
                str(out),
                "splits.train=0.8",
                "splits.val=0.2",
                "splits.test=0",
            ]
        )
        == 0
    )
    return out


def image_of(body: dict) -> str:
    """The SHA-256 of the (one) image in a chat-completion request."""
    for m in body["messages"]:
        for p in m["content"] if isinstance(m["content"], list) else []:
            if p.get("type") == "image_url":
                return hashlib.sha256(
                    base64.b64decode(p["image_url"]["url"].split(",", 1)[1])
                ).hexdigest()
    raise AssertionError("no image in the request")


def respond(body: dict) -> str:
    return f"a test picture {image_of(body)[:12]}"


def check_outputs(built: Path, out: Path, n_records: int) -> list[dict]:
    recs = [r for s in ("train", "val", "test") for r in load_records(out / f"{s}.jsonl")]
    originals = {
        r["id"]: r for s in ("train", "val", "test") for r in load_records(built / f"{s}.jsonl")
    }
    assert len(recs) == n_records
    for rec in recs:
        assert record_problem(rec) is None and rec["images"] == [] and record_image_refs(rec) == []
        orig = originals[rec["meta"]["image_record_id"]]
        assert rec["id"] == orig["id"] + "#caption" and rec["meta"]["caption_substituted"] is True
        (ref,) = orig["images"]
        assert rec["prompt"][0]["content"][0]["type"] == "caption" and rec["captions"] == {
            ref: rec["prompt"][0]["content"][0]["text"]
        }
    return recs


def test_caption_with_api_killed_and_restarted_never_recaptions_a_done_image(tmp_path):
    built = make_dataset(tmp_path, 12)
    out = tmp_path / "captioned"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "RMKIT_NO_PROGRESS": "1",
    }
    with OpenAITestServer(respond=respond, latency=0.4) as srv:
        cmd = [
            sys.executable,
            "-m",
            "rmkit",
            "build-data",
            "caption",
            str(built),
            "-o",
            str(out),
            "--base-url",
            srv.url,
            "--api-model",
            "test-model",
            "--concurrency",
            "2",
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        cache = out / "caption_cache.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if cache.exists() and len(cache.read_bytes().splitlines()) >= 2:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        done = {json.loads(x)["image"] for x in cache.read_bytes().splitlines() if x.strip()}
        assert 2 <= len(done) < 12, "the run should be killed part-way"
        assert not (out / "manifest.json").exists() and not (out / "train.jsonl").exists()
        first = len(srv.chat_requests())
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr
        # a request the killed run was still sending can be logged late with no body: only
        # complete requests count (a killed client cannot complete one)
        again = [image_of(r.body) for r in srv.chat_requests()[first:] if "messages" in r.body]
    every = {
        r.split("/")[2].split(".")[0]
        for s in ("train", "val", "test")
        for rec in load_records(built / f"{s}.jsonl")
        for r in rec["images"]
    }
    assert len(every) == 12
    assert not set(again) & done  # nothing captioned before the kill is asked for again
    assert sorted(again) == sorted(every - done)  # and each remaining image exactly once
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images"] == {
        "images": 12,
        "from_cache": len(done),
        "captioned": 12 - len(done),
        "empty": 0,
    }
    recs = check_outputs(built, out, 12)
    for rec in recs:  # each caption is the one the server gave for that very image
        ((ref, caption),) = rec["captions"].items()
        assert caption == f"a test picture {ref.split('/')[2][:12]}"
    # a third run is all cache hits, and the outputs are identical
    before = {s: (out / f"{s}.jsonl").read_bytes() for s in ("train", "val")}
    with OpenAITestServer(respond=respond) as srv2:
        assert (
            main(
                [
                    "build-data",
                    "caption",
                    str(built),
                    "-o",
                    str(out),
                    "--base-url",
                    srv2.url,
                    "--api-model",
                    "test-model",
                ]
            )
            == 0
        )
        assert srv2.count() == 0
    assert before == {s: (out / f"{s}.jsonl").read_bytes() for s in ("train", "val")}


def test_caption_retries_server_faults(tmp_path):
    built = make_dataset(tmp_path, 3)
    with OpenAITestServer(
        respond=respond, faults=["429", "500", None, "empty"], retry_after="0"
    ) as srv:
        rc = main(
            [
                "build-data",
                "caption",
                str(built),
                "-o",
                str(tmp_path / "out"),
                "--base-url",
                srv.url,
                "--api-model",
                "test-model",
                "--concurrency",
                "1",
            ]
        )
        assert rc == 0 and srv.count(succeeded=True) == 3
    check_outputs(built, tmp_path / "out", 3)


def test_caption_with_a_tiny_local_vlm_resumes_after_an_interruption(
    tmp_path, tiny_vlm, monkeypatch
):
    from rmkit.generation.hf import HFBackend

    built = make_dataset(tmp_path, 5)
    seen: list[str] = []
    real = HFBackend.generate

    def counting(self, conversations, params):
        if len(seen) >= 2:  # the second chunk is interrupted
            raise KeyboardInterrupt
        seen.extend(c[0]["content"][0]["image"] for c in conversations)
        return real(self, conversations, params)

    monkeypatch.setattr(HFBackend, "generate", counting)
    args = [
        "build-data",
        "caption",
        str(built),
        "-o",
        str(tmp_path / "out"),
        "--model",
        str(tiny_vlm),
        "--max-new-tokens",
        "4",
        "--batch-size",
        "2",
    ]
    assert main(args) == 130
    assert (
        len(seen) == 2
        and len((tmp_path / "out" / "caption_cache.jsonl").read_bytes().splitlines()) == 2
    )
    first = list(seen)
    seen.clear()
    monkeypatch.setattr(
        HFBackend,
        "generate",
        lambda self, c, p: (seen.extend(x[0]["content"][0]["image"] for x in c), real(self, c, p))[
            1
        ],
    )
    assert main(args) == 0
    assert len(seen) == 3 and not set(seen) & set(first)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (
        manifest["images"]["captioned"] == 3
        and manifest["images"]["from_cache"] == 2
        and manifest["model"] == f"local:{tiny_vlm}"
    )
    check_outputs(built, tmp_path / "out", 5)


def test_caption_usage_errors(tmp_path):
    built = make_dataset(tmp_path, 1)
    assert (
        main(["build-data", "caption", str(built), "-o", str(tmp_path / "o")]) == 1
    )  # neither --model nor --base-url
    assert (
        main(
            [
                "build-data",
                "caption",
                str(tmp_path),
                "-o",
                str(tmp_path / "o"),
                "--base-url",
                "http://127.0.0.1:9/v1",
                "--api-model",
                "m",
            ]
        )
        == 1
    )
    assert (
        main(
            [
                "build-data",
                "caption",
                str(built),
                "-o",
                str(built),
                "--base-url",
                "http://127.0.0.1:9/v1",
                "--api-model",
                "m",
            ]
        )
        == 1
    )


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    monkeypatch.setenv("RMKIT_NO_PROGRESS", "1")
