"""rmkit.utils.lock (SECURITY-REVIEW M6): one run per output folder, stale locks taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rmkit.errors import RmkitError
from rmkit.utils import lock

HOLDER = (
    "import sys, time\n"
    "from rmkit.utils import lock\n"
    "lock.acquire(sys.argv[1], what='test output')\n"
    "print('held', flush=True)\n"
    "time.sleep(120)\n"
)


def hold_in_subprocess(folder) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_owner_blocks_and_a_sigkilled_one_is_taken_over(tmp_path, caplog):
    folder = tmp_path / "out"
    owner = hold_in_subprocess(folder)
    try:
        record = json.loads((folder / lock.LOCK_NAME).read_text())
        assert record["pid"] == owner.pid and record["host"] and record["started"]
        with pytest.raises(RmkitError) as err:
            lock.acquire(folder, what="distill output")
        assert f"distill output {folder.resolve()} is in use" in err.value.message
        assert f"pid {owner.pid}" in err.value.message
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=30)
    handle = lock.acquire(folder)  # the kernel dropped the dead owner's flock
    assert "taking over a stale lock" in caplog.text and f"pid {owner.pid}" in caplog.text
    assert json.loads((folder / lock.LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release(handle)
    assert not (folder / lock.LOCK_NAME).exists()


def test_a_dead_pid_record_does_not_matter_only_the_flock_does(tmp_path):
    """A record naming a live pid (pid reuse) does not block: liveness is the flock's."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / lock.LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": "h"}))
    with lock.lock_output(folder):
        pass
    assert not (folder / lock.LOCK_NAME).exists()


def test_nested_acquisition_in_one_process_is_reentrant(tmp_path):
    with lock.lock_output(tmp_path / "run", what="run folder"):
        with lock.lock_output(tmp_path / "run"), lock.lock_output(tmp_path / "run" / "stage"):
            pass
        assert (tmp_path / "run" / lock.LOCK_NAME).exists()  # the outer hold remains
    assert not (tmp_path / "run" / lock.LOCK_NAME).exists()


def test_only_the_main_process_of_a_launch_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with lock.lock_output(tmp_path / "out") as handle:
        assert handle is None and not (tmp_path / "out" / lock.LOCK_NAME).exists()
    monkeypatch.setenv("RANK", "0")
    with lock.lock_output(tmp_path / "out") as handle:
        assert handle is not None


def test_the_error_arrives_at_once(tmp_path):
    owner = hold_in_subprocess(tmp_path)
    try:
        t0 = time.monotonic()
        with pytest.raises(RmkitError):
            lock.acquire(tmp_path)
        assert time.monotonic() - t0 < 1.0
    finally:
        owner.kill()
        owner.wait(timeout=30)
