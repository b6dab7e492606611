"""``rmkit run``: run a pipeline's stages in order into ``DIR/<stage>/``, skipping finished ones.

Markers in each stage folder:

- ``.rmkit-stage.json``, written when a stage starts: its config hash and chain hash;
- ``.rmkit-done.json``, written atomically after the stage's own outputs: the same hashes, the
  time it took and its key metrics. A stage is complete when this file exists.

The *chain hash* of stage i is ``sha256(chain[i-1] + config_hash[i])``: a stage is ``done`` only
while neither its own config nor any earlier stage's config changed. Statuses: ``done``,
``changed`` (its config changed), ``upstream-changed`` (an earlier one did), ``interrupted``
(started with this very config, not finished: it resumes) and ``pending``.

Once a stage runs (fresh or resumed), every later stage in the range runs from scratch, and a
fresh start first removes the markers of all later stages, so no later stage can be mistaken for
done after its input was rebuilt. ``DIR/summary.json`` is rewritten after every stage.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rmkit.errors import ConfigError, RmkitError
from rmkit.pipeline.config import PipelineConfig, Stage
from rmkit.pipeline.stages import KEEP, RUNNERS
from rmkit.utils import lock
from rmkit.utils.io import read_json, write_json_atomic

log = logging.getLogger(__name__)

DONE_FILE = ".rmkit-done.json"
STARTED_FILE = ".rmkit-stage.json"
RUN_FILE = ".rmkit-pipeline.json"
LOCK_FILE = lock.LOCK_NAME
SUMMARY_FILE = "summary.json"
FRESH = ("run", "rerun")


@dataclass
class PlannedStage:
    stage: Stage
    chain: str
    status: str  # done | changed | upstream-changed | interrupted | pending
    action: str  # skip | run | rerun | resume | not-run
    done: dict[str, Any] | None


def chain_hashes(config_hashes: list[str]) -> list[str]:
    """``chain[i] = sha256(chain[i-1] + config_hashes[i])`` with ``chain[-1] = ""``."""
    out, prev = [], ""
    for h in config_hashes:
        prev = hashlib.sha256((prev + h).encode()).hexdigest()
        out.append(prev)
    return out


def stage_status(done: dict | None, started: dict | None, config_hash: str, chain: str) -> str:
    """A stage's status from its markers (None when absent) and its current hashes."""
    marker = done if done is not None else started
    if marker is None:
        return "pending"
    if marker.get("chain_hash") == chain:
        return "done" if done is not None else "interrupted"
    return "changed" if marker.get("config_hash") != config_hash else "upstream-changed"


def plan_actions(
    statuses: list[str], names: list[str], start: str | None = None, stop: str | None = None
) -> list[str]:
    """What to do with each stage: skip, run (fresh), rerun (fresh, replacing outputs), resume,
    or not-run (outside ``--from``/``--until``). ``--from STAGE`` re-runs STAGE from scratch;
    every stage before it must be done."""
    lo = names.index(start) if start else 0
    hi = names.index(stop) if stop else len(names) - 1
    if lo > hi:
        raise ConfigError(f"--from {start} comes after --until {stop}")
    actions: list[str] = []
    dirty = False
    for i, status in enumerate(statuses):
        if i < lo:
            if status != "done":
                raise ConfigError(
                    f"--from {start}: the earlier stage '{names[i]}' is {status}, not done",
                    hint=f"run without --from (or --from {names[i]}) first",
                )
            actions.append("skip")
        elif i > hi:
            actions.append("not-run")
        elif dirty or (start is not None and i == lo):
            actions.append("run" if status == "pending" else "rerun")
            dirty = True
        elif status == "done":
            actions.append("skip")
        elif status == "interrupted":
            actions.append("resume")
            dirty = True
        else:
            actions.append("run" if status == "pending" else "rerun")
            dirty = True
    return actions


def _marker(folder: Path, name: str) -> dict | None:
    path = folder / name
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except RmkitError:  # a damaged marker counts as absent
        return None
    return data if isinstance(data, dict) else None


def check_stage_name(cfg: PipelineConfig, name: str | None, option: str) -> None:
    if name is not None and name not in cfg.stages:
        import difflib

        close = difflib.get_close_matches(name, cfg.names, n=1, cutoff=0.4)
        raise ConfigError(
            f"{option} {name}: no such stage" + (f"; did you mean '{close[0]}'?" if close else ""),
            hint="stages: " + ", ".join(cfg.names),
        )


def make_plan(
    cfg: PipelineConfig, run_dir: Path, start: str | None = None, stop: str | None = None
) -> list[PlannedStage]:
    """Resolve every stage for ``run_dir``, read its markers, and decide what to do."""
    check_stage_name(cfg, start, "--from")
    check_stage_name(cfg, stop, "--until")
    stages = cfg.resolve(Path(run_dir).absolute())
    chains = chain_hashes([s.config_hash for s in stages])
    dones = [_marker(s.output, DONE_FILE) for s in stages]
    statuses = [
        stage_status(d, _marker(s.output, STARTED_FILE), s.config_hash, c)
        for s, d, c in zip(stages, dones, chains, strict=True)
    ]
    actions = plan_actions(statuses, cfg.names, start, stop)
    return [
        PlannedStage(*row) for row in zip(stages, chains, statuses, actions, dones, strict=True)
    ]


def claim_run_dir(run_dir: Path, recipe: str | None) -> None:
    """Create the run folder, or check an existing one is an rmkit run (stages get cleared)."""
    marker = run_dir / RUN_FILE
    if run_dir.exists() and not run_dir.is_dir():
        raise RmkitError(f"{run_dir} exists and is not a folder")
    if run_dir.is_dir() and not marker.exists() and any(run_dir.iterdir()):
        raise RmkitError(
            f"{run_dir} is not empty and was not made by `rmkit run`",
            hint="choose a new --output folder (stage folders in it are cleared when re-run)",
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        write_json_atomic(marker, {"recipe": recipe, "created_at": _now()})


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold the exclusive lock of :mod:`rmkit.utils.lock` on ``run_dir`` (released when the
    process ends, even by SIGKILL; a stale one is taken over). Stages lock their own folders;
    a stage run in this process re-enters no lock, so nothing deadlocks."""
    with lock.lock_output(run_dir, what="run folder"):
        yield


def clear_stage_dir(folder: Path, keep: tuple[str, ...]) -> None:
    """Empty ``folder`` except the entries named in ``keep``."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name in keep or entry.name == lock.LOCK_NAME:  # a held lock stays in place
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@contextlib.contextmanager
def served(stage: Stage):
    """Start the stage's local model servers (127.0.0.1); yield ``{name: base URL}``."""
    if not stage.serve:
        yield None
        return
    from rmkit.serve import build_app
    from rmkit.serve.server import ModelServer

    servers: dict[str, Any] = {}
    try:
        for name, spec in stage.serve.items():
            app = build_app(
                spec.model,
                adapter=spec.adapter,
                dtype=spec.dtype,
                batch_size=spec.batch_size,
                device=spec.device,
            )
            servers[name] = ModelServer(app, "127.0.0.1", spec.port).start()
            log.info("stage %s: serving %s at %s", stage.name, spec.model, servers[name].url)
        yield {name: server.url for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()


class PipelineRunner:
    """Runs a plan and keeps ``DIR/summary.json`` up to date."""

    def __init__(self, cfg: PipelineConfig, run_dir: Path, recipe: str | None = None):
        self.cfg, self.run_dir, self.recipe = cfg, Path(run_dir).absolute(), recipe
        self.rows: dict[str, dict[str, Any]] = {}

    def run(self, start: str | None = None, stop: str | None = None) -> dict[str, Any]:
        claim_run_dir(self.run_dir, self.recipe)
        with run_lock(self.run_dir):
            return self._run(start, stop)

    def _run(self, start: str | None, stop: str | None) -> dict[str, Any]:
        plan = make_plan(self.cfg, self.run_dir, start, stop)
        for p in plan:
            self.rows[p.stage.name] = self._row(p)
        self._write_summary()
        for i, p in enumerate(plan):
            if p.action in FRESH or p.action == "resume":
                self._run_stage(p, plan[i + 1 :])
                self._write_summary()
        return self._write_summary()

    def _row(self, p: PlannedStage) -> dict[str, Any]:
        done = p.done if p.status == "done" else None
        return {
            "kind": p.stage.kind,
            "status": p.status,
            "action": {"skip": "skipped", "not-run": "not-run"}.get(p.action, "pending"),
            "output": str(p.stage.output),
            "config_hash": p.stage.config_hash,
            "seconds": done.get("seconds") if done else None,
            "metrics": done.get("metrics", {}) if done else {},
        }

    def _run_stage(self, p: PlannedStage, later: list[PlannedStage]) -> None:
        stage, row = p.stage, self.rows[p.stage.name]
        resume = p.action == "resume"
        if not resume:
            self._fresh_start(p, later)
        else:
            log.info("stage %s (%s): resuming an interrupted run", stage.name, stage.kind)
        stage.output.mkdir(parents=True, exist_ok=True)
        marker = {"stage": stage.name, "kind": stage.kind, "config_hash": stage.config_hash}
        marker["chain_hash"] = p.chain
        write_json_atomic(stage.output / STARTED_FILE, {**marker, "started_at": _now()})
        row["action"] = "resumed" if resume else "ran"
        t0 = time.perf_counter()
        try:
            with served(stage) as urls:
                live = (
                    stage
                    if urls is None
                    else self.cfg.resolve_stage(stage.name, self.run_dir, urls)
                )
                metrics = RUNNERS[stage.kind](live, resume)
        except BaseException as e:
            interrupted = isinstance(e, KeyboardInterrupt)
            row.update(status="interrupted" if interrupted else "failed")
            row["seconds"] = round(time.perf_counter() - t0, 3)
            if not interrupted:
                row["error"] = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
            self._write_summary()
            if isinstance(e, Exception):
                raise stage_error(stage, e) from e
            raise
        finally:
            release_memory()
        seconds = round(time.perf_counter() - t0, 3)
        done = {**marker, "finished_at": _now(), "seconds": seconds, "metrics": metrics}
        write_json_atomic(stage.output / DONE_FILE, done)
        row.update(status="done", seconds=seconds, metrics=metrics)
        row.pop("error", None)
        log.info("stage %s (%s) done in %.1fs: %s", stage.name, stage.kind, seconds, metrics)

    def _fresh_start(self, p: PlannedStage, later: list[PlannedStage]) -> None:
        stage = p.stage
        if p.status in ("changed", "upstream-changed") and p.action == "rerun":
            why = "its config changed" if p.status == "changed" else "an earlier stage changed"
            log.warning(
                "stage %s: %s since it ran; re-running it and every stage after it", stage.name, why
            )
        for q in later:  # their inputs are about to be rebuilt
            for name in (DONE_FILE, STARTED_FILE):
                (q.stage.output / name).unlink(missing_ok=True)
            self.rows[q.stage.name].update(status="pending", seconds=None, metrics={})
        clear_stage_dir(stage.output, KEEP[stage.kind])

    def _write_summary(self) -> dict[str, Any]:
        metrics = {
            f"{name}/{key}": value
            for name, row in self.rows.items()
            for key, value in (row.get("metrics") or {}).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        summary = {
            "recipe": self.recipe,
            "output": str(self.run_dir),
            "complete": all(r["status"] == "done" for r in self.rows.values()),
            "updated_at": _now(),
        }
        for row in self.rows.values():  # a report stage's headline numbers go on top
            if row.get("kind") == "report" and row.get("status") == "done":
                summary.update(row.get("metrics") or {})
        summary.update({"stages": self.rows, "metrics": metrics})
        write_json_atomic(self.run_dir / SUMMARY_FILE, summary)
        return summary


def stage_error(stage: Stage, e: Exception) -> RmkitError:
    """The error funnel's message for a failed stage: which stage, what went wrong, a hint."""
    if isinstance(e, RmkitError):
        hint = e.hint or "fix the cause and rerun: finished stages are skipped"
        return RmkitError(f"stage '{stage.name}' ({stage.kind}) failed: {e.message}", hint)
    return RmkitError(
        f"stage '{stage.name}' ({stage.kind}) failed: {type(e).__name__}: {e}",
        "rerun to resume; RMKIT_DEBUG=1 shows the traceback",
    )


def release_memory() -> None:
    """Free what a finished stage held (models live only in stage functions) before the next."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_pipeline(
    cfg: PipelineConfig,
    run_dir: str | Path,
    start: str | None = None,
    stop: str | None = None,
    recipe: str | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` into ``run_dir`` (stages ``start``..``stop``); returns the summary."""
    return PipelineRunner(cfg, Path(run_dir), recipe).run(start, stop)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
