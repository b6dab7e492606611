"""SECURITY-REVIEW M6 (two runs on one ``--output``) and L8 (call accounting across SIGKILL).

M6: a second ``rmkit distill`` on an output folder another run is writing stops at once with an
error naming the folder and the owner's pid, and leaves the folder alone; after the owner is
SIGKILLed its lock is stale and the next run takes it over (with a warning) and finishes.

L8: every answer that entered the request cache is in the usage log, so after SIGKILL + resume
``summary.json``'s ``paid_calls`` counts every answer the server gave that the client received
(the review saw 154 against 162 requests).
"""

from __future__ import annotations

import json
import signal
import time

from tests.helpers.openai_server import OpenAITestServer
from tests.integration.distill.distill_helpers import (
    cli_env,
    good_position,
    read_jsonl,
    start_cli,
)

from rmkit.utils.lock import LOCK_NAME


def respond(body: dict) -> str:
    good = good_position(body)
    pick = good if body.get("seed", 0) == 0 else 3 - good
    return f"<think>reasoning</think><answer>{pick}</answer>"


def distill_args(src, out, url) -> list:
    args = ["distill", "-i", src, "--base-url", url, "--api-model", "test-model"]
    return [*args, "-o", out, "-n", 2, "--concurrency", 2, "--set", "chunk_records=4"]


def wait_for(cond, proc, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_second_run_on_the_same_output_stops_then_a_killed_owner_is_taken_over(
    tmp_path, records_file
):
    src = records_file(10)
    out = tmp_path / "conc"
    with OpenAITestServer(respond, latency=0.3) as srv:
        args = distill_args(src, out, srv.url)
        first = start_cli(args, cli_env())
        lock_file = out / LOCK_NAME

        def owned() -> bool:
            try:
                return json.loads(lock_file.read_text() or "{}").get("pid") == first.pid
            except (OSError, ValueError):
                return False

        wait_for(owned, first, "the first run never took the lock")
        second = start_cli(args, cli_env())
        _, stderr = second.communicate(timeout=60)
        assert second.returncode == 1, stderr
        assert "in use by another rmkit run" in stderr
        assert str(out.resolve()) in stderr and f"pid {first.pid}" in stderr
        assert first.poll() is None  # the owner runs on, undisturbed

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        third = start_cli(args, cli_env())
        _, stderr = third.communicate(timeout=120)
        assert third.returncode == 0, stderr
        assert "taking over a stale lock" in stderr and f"pid {first.pid}" in stderr
    traces = read_jsonl(out / "traces.jsonl")
    assert len(traces) == len({t["id"] for t in traces}) == 10  # no duplicated trace
    assert not lock_file.exists()  # released (and removed) at the end


def test_paid_calls_are_exact_after_sigkill_and_resume(tmp_path, records_file):
    src = records_file(12)
    out = tmp_path / "crash"
    with OpenAITestServer(respond, latency=0.15) as srv:
        args = distill_args(src, out, srv.url)
        proc = start_cli(args, cli_env())
        cache = out / "cache" / "completions.jsonl"
        done = out / "state" / "done.jsonl"

        def midway() -> bool:
            # answers cached beyond the last chunk boundary: the old accounting lost them
            return done.exists() and done.stat().st_size > 0 and len(read_jsonl(cache)) % 8 != 0

        wait_for(midway, proc, "the run never got going")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        cached_at_kill = len(read_jsonl(cache))
        proc = start_cli(args, cli_env())
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        received = srv.count()
    summary = json.loads((out / "summary.json").read_text())
    cached = len(read_jsonl(cache))
    assert cached == 24 and 0 < cached_at_kill < 24
    # every answer the client stored was counted, even the killed run's last ones
    assert summary["paid_calls"] >= cached
    # and no more than the server received (requests cut off by the kill are the difference)
    assert summary["paid_calls"] <= summary["api_calls"] <= received
    assert received - summary["paid_calls"] <= 2  # at most `concurrency` in flight at the kill
