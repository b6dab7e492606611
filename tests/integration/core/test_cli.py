"""The CLI shell: version, help, error funnel, exit codes, and cheap start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_help_and_recipes_validate_sample_nothing_and_log_nothing(monkeypatch, tmp_path):
    """Issue 17 item 9: no per-command CPU sampling, no log line on commands without a model."""
    import builtins

    opened: list[str] = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert main(["--help"]) == 0
    recipes = Path(__file__).resolve().parents[3] / "recipes"
    assert main(["recipes", "validate", str(recipes)]) == 0
    assert "/proc/stat" not in opened
    assert "OMP_WAIT_POLICY" not in os.environ

    env = {"RMKIT_NO_PROGRESS": "1"}
    for args in (["--help"], ["recipes", "validate", recipes]):
        proc = rmkit(*args, env=env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == "", proc.stderr  # no INFO (or any) log line


def test_rmkit_threads_sets_torch_threads_where_a_model_is_loaded(monkeypatch):
    import pytest
    import torch

    from rmkit.errors import RmkitError
    from rmkit.models.loading import configure_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("RMKIT_THREADS", "1")
        assert configure_threads() == 1 == torch.get_num_threads()
        monkeypatch.setenv("RMKIT_THREADS", "auto")
        assert configure_threads() == torch.get_num_threads()
        monkeypatch.setenv("RMKIT_THREADS", "zero")
        with pytest.raises(RmkitError, match="RMKIT_THREADS"):
            configure_threads()
    finally:
        torch.set_num_threads(before)
