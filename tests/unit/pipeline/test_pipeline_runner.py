"""The runner on light stages (build-data, mix): markers, skip / changed / resume, the summary,
``--from`` / ``--until``, the run-folder guard and the error funnel. No models are loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rmkit.cli.main import main
from rmkit.config.kinds import load_config
from rmkit.errors import RmkitError
from rmkit.pipeline.runner import DONE_FILE, STARTED_FILE, make_plan, run_pipeline

ROWS = [
    {"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.", "rejected": f"{2 * i + 1}."}
    for i in range(12)
]


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    data = tmp_path / "recipe" / "data"
    data.mkdir(parents=True)
    for name, rows in (("a.jsonl", ROWS[:8]), ("b.jsonl", ROWS[8:])):
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    split = {"train": 1.0, "val": 0.0, "test": 0.0}
    stages = {
        "first": {
            "kind": "build-data",
            "sources": [{"format": "pairs", "inputs": ["data/a.jsonl"]}],
            "splits": split,
        },
        "second": {
            "kind": "build-data",
            "sources": [{"format": "pairs", "inputs": ["data/b.jsonl"]}],
            "splits": split,
        },
        "mixed": {
            "kind": "mix",
            "parts": [
                {"path": "${stages.first.output}", "weight": 2},
                {"path": "${stages.second.output}", "weight": 1},
            ],
            "splits": ["train"],
            "seed": "${vars.seed}",
        },
    }
    path = tmp_path / "recipe" / "pipeline.yaml"
    path.write_text(
        yaml.safe_dump({"kind": "pipeline", "vars": {"seed": 0}, "stages": stages}, sort_keys=False)
    )
    return path


def load(recipe: Path, *overrides: str):
    return load_config(recipe, list(overrides), kind="pipeline")


def actions(summary: dict) -> dict[str, str]:
    return {name: row["action"] for name, row in summary["stages"].items()}


def test_runs_in_order_then_skips_what_is_done(recipe, tmp_path):
    run = tmp_path / "run"
    summary = run_pipeline(load(recipe), run, recipe=str(recipe))
    assert summary["complete"] is True
    assert actions(summary) == {"first": "ran", "second": "ran", "mixed": "ran"}
    assert summary["stages"]["first"]["metrics"] == {"records": {"train": 8, "val": 0, "test": 0}}
    # 2 : 1 from 8 and 4 records: the largest exact mix is 8 + 4
    assert summary["stages"]["mixed"]["metrics"] == {"records": {"train": 12, "val": 0, "test": 0}}
    done = json.loads((run / "mixed" / DONE_FILE).read_text())
    assert done["config_hash"] == summary["stages"]["mixed"]["config_hash"]
    assert json.loads((run / "summary.json").read_text())["complete"] is True
    stamp = (run / "mixed" / "train.jsonl").stat().st_mtime_ns

    again = run_pipeline(load(recipe), run)
    assert actions(again) == {"first": "skipped", "second": "skipped", "mixed": "skipped"}
    assert again["stages"]["mixed"]["metrics"] == summary["stages"]["mixed"]["metrics"]
    assert (run / "mixed" / "train.jsonl").stat().st_mtime_ns == stamp


def test_a_changed_config_reruns_that_stage_and_the_later_ones(recipe, tmp_path, caplog):
    run = tmp_path / "run"
    run_pipeline(load(recipe), run)
    plan = make_plan(load(recipe, "stages.second.seed=4"), run)
    assert [(p.status, p.action) for p in plan] == [
        ("done", "skip"),
        ("changed", "rerun"),
        ("upstream-changed", "rerun"),
    ]
    summary = run_pipeline(load(recipe, "stages.second.seed=4"), run)
    assert actions(summary) == {"first": "skipped", "second": "ran", "mixed": "ran"}
    assert "stage second: its config changed since it ran" in caplog.text
    # a change of the last stage alone re-runs only that one
    summary = run_pipeline(load(recipe, "stages.second.seed=4", "vars.seed=1"), run)
    assert actions(summary) == {"first": "skipped", "second": "skipped", "mixed": "ran"}


def test_until_and_from(recipe, tmp_path):
    run = tmp_path / "run"
    summary = run_pipeline(load(recipe), run, stop="second")
    assert actions(summary) == {"first": "ran", "second": "ran", "mixed": "not-run"}
    assert summary["complete"] is False and not (run / "mixed").exists()
    summary = run_pipeline(load(recipe), run, start="second")
    assert actions(summary) == {"first": "skipped", "second": "ran", "mixed": "ran"}
    assert summary["complete"] is True


def test_an_interrupted_stage_resumes_and_a_fresh_start_clears_later_markers(recipe, tmp_path):
    run = tmp_path / "run"
    run_pipeline(load(recipe), run)
    # as if the run had been killed inside 'second': its started marker stays, done is gone
    (run / "second" / DONE_FILE).unlink()
    plan = make_plan(load(recipe), run)
    assert [(p.status, p.action) for p in plan] == [
        ("done", "skip"),
        ("interrupted", "resume"),
        ("done", "rerun"),
    ]
    summary = run_pipeline(load(recipe), run)
    assert actions(summary) == {"first": "skipped", "second": "resumed", "mixed": "ran"}
    # re-running 'first' from scratch invalidates the markers of every later stage first
    (run / "second" / "stray.txt").write_text("left over")
    summary = run_pipeline(load(recipe), run, start="first", stop="first")
    assert (
        not (run / "second" / DONE_FILE).exists() and not (run / "second" / STARTED_FILE).exists()
    )
    assert summary["stages"]["second"]["status"] == "pending"
    assert [p.action for p in make_plan(load(recipe), run)] == ["skip", "run", "run"]
    run_pipeline(load(recipe), run)
    assert not (run / "second" / "stray.txt").exists()  # a fresh start empties the folder


def test_refuses_a_folder_it_did_not_make(recipe, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(RmkitError, match="not empty and was not made by `rmkit run`"):
        run_pipeline(load(recipe), foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_a_failing_stage_names_itself_and_is_recorded(recipe, tmp_path):
    run = tmp_path / "run"
    (recipe.parent / "data" / "b.jsonl").write_text('{"prompt": "only a prompt"}\n')
    with pytest.raises(RmkitError) as e:
        run_pipeline(load(recipe), run)
    assert e.value.message.startswith("stage 'second' (build-data) failed: ")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stages"]["first"]["status"] == "done"
    assert (
        summary["stages"]["second"]["status"] == "failed" and summary["stages"]["second"]["error"]
    )
    assert summary["stages"]["mixed"]["action"] == "pending" and summary["complete"] is False


def test_cli_dry_run_prints_the_plan_and_runs_nothing(recipe, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(["run", str(recipe), "--output", str(run), "--dry-run", "stages.second.seed=2"]) == 0
    )
    out = capsys.readouterr().out
    for word in ("first", "second", "mixed", "build-data", "mix", "pending"):
        assert word in out
    assert not run.exists()
    assert main(["run", str(recipe), "--output", str(run), "--until", "first"]) == 0
    capsys.readouterr()
    assert main(["run", str(recipe), "--output", str(run), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "done" in out and "skip" in out
    assert main(["run", str(recipe), "--output", str(run), "--from", "secnd"]) == 1
    assert "no such stage; did you mean 'second'?" in capsys.readouterr().err


def test_two_runs_cannot_share_a_folder(recipe, tmp_path):
    import fcntl

    run = tmp_path / "run"
    run_pipeline(load(recipe), run, stop="first")
    with open(run / ".rmkit.lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another process would
        with pytest.raises(RmkitError, match="run folder .* is in use by another rmkit run"):
            run_pipeline(load(recipe), run)
    assert run_pipeline(load(recipe), run)["complete"] is True
