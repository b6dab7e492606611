"""What each stage kind runs, keeps across a fresh start, resumes with, and reports.

Every ``run_*`` calls the entry point of the subsystem that owns the stage (never a copy of its
logic) and returns the stage's key metrics for ``summary.json``. ``resume`` is True when an
earlier run of the same stage, with the same config, was interrupted:

=============  ===========================================  ===============================
kind           entry point                                  an interrupted stage ...
=============  ===========================================  ===============================
build-data     rmkit.data.build.build_data                  is rebuilt (deterministic)
caption        rmkit.data.caption.caption_dataset           reuses its caption cache
mix            rmkit.data.mix.mix_datasets                  is mixed again (deterministic)
distill        rmkit.distill.engine.run_distill             continues from its done-log
train          rmkit.training.train (or accelerate launch)  continues from its last checkpoint
eval           rmkit.eval.runner.run_eval                   judges only missing predictions
report         rmkit.pipeline.report.build_report           is written again (cheap)
=============  ===========================================  ===============================

On a fresh start (first run, changed config, or a re-run of an earlier stage) the stage folder
is emptied except for the caches in :data:`KEEP`, whose keys already cover every setting.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rmkit.errors import RmkitError
from rmkit.pipeline.config import Stage, launch_processes
from rmkit.utils.io import iter_jsonl, read_json, write_json_atomic

log = logging.getLogger(__name__)

# Folder entries a fresh start keeps (content-keyed caches: a rerun never pays twice).
KEEP: dict[str, tuple[str, ...]] = {
    "build-data": (),
    "caption": ("caption_cache.jsonl",),
    "mix": (),
    "distill": ("cache",),
    "train": (),
    "eval": ("cache",),
    "report": (),
}
LAUNCH_FILE = ".rmkit-launch.json"
TRAIN_KEYS = (
    "loss", "reward/total", "accuracy", "response/length", "adv/filtered_frac",
    "rl/zero_variance_groups",
)  # fmt: skip
# report keys present only with a ``sft`` eval run (stage-wise accounting) or an RL stage
REPORT_STAGE_KEYS = (
    "accuracy_sft", "sft_gain", "sft_gain_ci95_low", "sft_gain_ci95_high", "sft_gain_significant",
    "rl_gain", "rl_gain_ci95_low", "rl_gain_ci95_high", "rl_gain_significant",
    "verdicts_changed_sft_to_rl", "rl_zero_variance_groups",
    "accuracy_before_ci95_low", "accuracy_before_ci95_high", "accuracy_sft_ci95_low",
    "accuracy_sft_ci95_high", "accuracy_after_ci95_low", "accuracy_after_ci95_high",
)  # fmt: skip


def run_build(stage: Stage, resume: bool) -> dict[str, Any]:
    from rmkit.data.build import build_data

    manifest = build_data(stage.config, stage.output)
    return {"records": manifest["counts"]["total"]}


def run_caption(stage: Stage, resume: bool) -> dict[str, Any]:
    from rmkit.data.caption import CaptionSettings, caption_dataset

    c = stage.config
    settings = CaptionSettings(
        max_new_tokens=c.max_new_tokens,
        temperature=c.temperature,
        top_k=c.top_k,
        repetition_penalty=c.repetition_penalty,
        splits=tuple(c.splits),
        keep_text=c.keep_text,
    )
    if c.prompt:
        settings.prompt = c.prompt
    settings.chunk_size = c.concurrency if c.is_api else c.batch_size
    backend = c.build(server_log=Path(stage.output) / "server.log")
    try:
        manifest = caption_dataset(c.dataset, stage.output, backend, c.model_id, settings)
    finally:
        backend.close()
    return {
        "images": manifest["images"].get("images"),
        "captioned": manifest["images"].get("captioned"),
        "records": {s: v["records"] for s, v in manifest["counts"].items()},
    }


def run_mix(stage: Stage, resume: bool) -> dict[str, Any]:
    from rmkit.data.mix import mix_datasets

    c = stage.config
    manifest = mix_datasets(
        [(p.path, p.weight) for p in c.parts],
        stage.output,
        seed=c.seed,
        by=c.by,
        total=c.total,
        splits=c.splits,
        repeat=c.repeat,
    )
    return {
        "records": {k.removesuffix(".jsonl"): v["records"] for k, v in manifest["outputs"].items()}
    }


def run_distill(stage: Stage, resume: bool) -> dict[str, Any]:
    from rmkit.distill.engine import run_distill as distill

    summary = distill(stage.config, restart=not resume)
    if not summary.get("complete", True):
        raise RmkitError(
            f"distill finished {summary.get('records_done')} of {summary.get('records')} records",
            hint="rerun the same command: finished records are kept, requests are cached",
        )
    out = {k: summary[k] for k in ("records", "kept", "rejected") if k in summary}
    for key in ("sft_records", "rl_records"):
        if key in summary:
            out[key] = summary[key]
    if "cmkd" in summary:
        out["cmkd_targets"] = summary["cmkd"]["targets"]
    return out


def run_train(stage: Stage, resume: bool) -> dict[str, Any]:
    if stage.launch is not None:
        summary = _launch_train(stage, resume)
    else:
        from rmkit.training import train

        summary = train(stage.config, resume=resume)
    return {"steps": summary.get("steps"), **last_train_metrics(stage.output / "metrics.jsonl")}


def run_eval(stage: Stage, resume: bool) -> dict[str, Any]:
    from rmkit.eval.runner import run_eval as evaluate

    metrics = evaluate(stage.config)
    keep = ("benchmark", "protocol", "overall", "macro", "n_scored", "n_loaded")
    return {k: metrics[k] for k in keep if k in metrics}


def run_report(stage: Stage, resume: bool) -> dict[str, Any]:
    from rmkit.pipeline.report import build_report

    res = build_report(stage.config)
    keep = ("accuracy_before", "accuracy_after", "n_heldout", "difference", "ci95_low")
    keep += ("ci95_high", "significant", "n_clusters", "bootstrap", *REPORT_STAGE_KEYS)
    split = stage.config.split_name
    keep += (f"n_{split}", f"n_{split}_clusters", "n_transfer", "n_transfer_clusters")
    keep += tuple(k for k in res if k.startswith("transfer_"))
    return {k: res[k] for k in keep if k in res}


RUNNERS: dict[str, Callable[[Stage, bool], dict[str, Any]]] = {
    "build-data": run_build,
    "caption": run_caption,
    "mix": run_mix,
    "distill": run_distill,
    "train": run_train,
    "eval": run_eval,
    "report": run_report,
}


def last_train_metrics(path: Path) -> dict[str, Any]:
    """The last logged value of each key metric in a train stage's ``metrics.jsonl``."""
    if not path.is_file():
        return {}
    last: dict[str, Any] = {}
    for _, row in iter_jsonl(path):
        for key, value in row.items():
            if key in TRAIN_KEYS or key.startswith("reward/"):
                last[key] = value
    return last


def launch_command(stage: Stage, resume: bool) -> list[str]:
    """``accelerate launch`` of :mod:`rmkit.pipeline.launch` for a train stage."""
    assert stage.launch is not None
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    cmd += ["--config_file", stage.launch.accelerate_config]
    cmd += ["--num_processes", str(launch_processes(stage.launch))]
    cmd += ["-m", "rmkit.pipeline.launch", str(stage.output / LAUNCH_FILE)]
    return cmd + (["--resume"] if resume else [])


def _launch_train(stage: Stage, resume: bool) -> dict[str, Any]:
    stage.output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stage.output / LAUNCH_FILE, {"stage": stage.name, "config": stage.data})
    cmd = launch_command(stage, resume)
    log.info("stage %s: %s", stage.name, " ".join(cmd))
    code = subprocess.call(cmd)
    if code != 0:
        raise RmkitError(
            f"accelerate launch exited with code {code}",
            hint="the processes' errors are in the log above; rerun to resume from the last checkpoint",
        )
    summary_path = stage.output / "train_summary.json"
    return read_json(summary_path) if summary_path.is_file() else {}


# The settings the plan shows per stage kind (top-level config sections; None values omitted).
SETTINGS_SHOWN = {
    "train": ("stage", "model", "weights", "optim", "batch", "rl", "rewards", "epochs"),
    "distill": ("mode", "template", "limit", "sample", "sampling", "filters", "rejection", "hard"),
    "eval": ("benchmark", "template", "method", "votes", "sampling"),
    "caption": ("sampling",),
}
_NOT_SHOWN = {"rollout", "lora", "shared_prompts", "base_url", "api_key_env", "cache_dir"}


def stage_settings(stage: Stage) -> list[str]:
    """The resolved settings that decide what a stage computes, as ``key=value`` strings (the
    values the run will use, algorithm and benchmark defaults filled in)."""
    shown = SETTINGS_SHOWN.get(stage.kind)
    if not shown:
        return []
    data = stage.config.model_dump(mode="json")
    if stage.kind == "train" and data.get("stage") != "rl":
        data.pop("rl", None)
        data.pop("rewards", None)
    out: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                if k not in _NOT_SHOWN:
                    walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for v in value:
                name = v.get("name", "?")
                walk(f"{prefix}[{name}]", {k: x for k, x in v.items() if k != "name"})
        else:
            out.append(f"{prefix}={value}")

    for key in shown:
        if key in data:
            walk(key, data[key])
    return out


def stage_inputs(stage: Stage) -> list[str]:
    """The main input paths of a stage (for the plan): data it reads, models it starts from."""
    c, kind = stage.config, stage.kind
    if kind == "build-data":
        return [x for src in c.sources for x in src.inputs]
    if kind == "caption":
        return [c.dataset]
    if kind == "mix":
        return [p.path for p in c.parts]
    if kind == "distill":
        found = [c.input, c.teacher.adapter or c.teacher.model, c.cmkd.image_records]
    elif kind == "train":
        found = [c.data.path, c.model.init_from]
    elif kind == "report":
        found = [c.before, c.sft, c.after, *c.train]
    else:
        found = [c.data, c.judge.adapter or c.judge.model]
    found += [s.adapter for s in stage.serve.values()]
    return [x for x in found if x]
