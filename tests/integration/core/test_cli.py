"""The CLI shell: version, help, error funnel, exit codes, and cheap start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from rmkit import __version__
from rmkit.cli.main import main


def rmkit(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "rmkit", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"rmkit {__version__}"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "build-data" in out and "recipes" in out


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from rmkit.cli.main import main; main(['--help']); "
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'peft', 'openai', 'accelerate', 'pyarrow') if m in sys.modules]; "
        "print('HEAVY', heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    ).stdout
    assert "HEAVY []" in out


def test_error_funnel_one_line_with_hint_and_exit_1(tmp_path):
    r = rmkit("build-data", "-f", "hh-rlhf", "-i", tmp_path / "missing.jsonl", "-o", tmp_path / "o")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error: input not found") and lines[1].startswith("hint:")
    assert "Traceback" not in r.stderr


def test_debug_variable_shows_traceback(tmp_path):
    r = rmkit(
        "build-data",
        "-f",
        "hh-rlhf",
        "-i",
        tmp_path / "missing.jsonl",
        "-o",
        tmp_path / "o",
        env={"RMKIT_DEBUG": "1"},
    )
    assert r.returncode == 1 and "Traceback" in r.stderr and "RmkitError" in r.stderr


def test_usage_error_exits_2():
    r = rmkit("build-data", "--no-such-flag")
    assert r.returncode == 2 and "No such option" in r.stderr
    r = rmkit("no-such-command")
    assert r.returncode == 2


def test_results_on_stdout_logs_on_stderr(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    r = rmkit("build-data", "-f", "pairs", "-i", data, "-o", tmp_path / "o")
    assert r.returncode == 0
    assert "total" in r.stdout and "INFO" not in r.stdout
    assert "wrote" in r.stderr


def test_recipes_validate_reports_each_file(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("kind: build-data\nsources: [{format: pairs, inputs: [x.jsonl]}]\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: build-data\nsources: [{format: pairs, inputs: [x.jsonl]}]\nsed: 1\n")
    assert main(["recipes", "validate", str(good)]) == 0
    assert main(["recipes", "validate", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert f"ok    {good}" in captured.out
    assert f"FAIL  {bad}" in captured.out and "did you mean 'seed'" in captured.out


def test_omp_wait_policy_follows_the_cores_in_use_at_start():
    from rmkit.cli.main import busy_cores, omp_wait_policy

    assert omp_wait_policy(0.0) is None and omp_wait_policy(0.4) is None  # OpenMP's default
    assert omp_wait_policy(0.5) == "PASSIVE" and omp_wait_policy(1.7) == "PASSIVE"
    busy = busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= (os.cpu_count() or 1) + 1e-9


def test_commands_set_the_policy_unless_the_user_did(monkeypatch, capsys):
    import rmkit.cli.main as cli

    monkeypatch.setattr(cli, "_openmp_loaded", lambda: False)  # as in a fresh `rmkit` process
    for busy, want in ((1.2, "PASSIVE"), (0.1, None)):
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        monkeypatch.setattr(cli, "busy_cores", lambda interval=0.1, b=busy: b)
        assert main(["recipes", "--help"]) == 0
        assert os.environ.get("OMP_WAIT_POLICY") == want
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setattr(cli, "busy_cores", lambda interval=0.1: 2.0)
    assert main(["recipes", "--help"]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # a value the user set is kept
