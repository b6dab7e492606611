"""What the SFT and RL loops share: run setup, resume, cross-process sums, per-step
bookkeeping (metrics, progress, checkpoints) and the final output.

Processes come from ``accelerate launch`` / ``torchrun`` (or a plain single process); the
``Accelerator`` picks gloo on CPU and NCCL on GPUs. Every process runs the same loop on its own
share of the data; gradients are averaged by the data-parallel wrapper (DDP, FSDP or DeepSpeed;
:mod:`rmkit.training.sharding`). Only the main process writes files and shows progress.
Periodic checkpoints (:mod:`rmkit.training.checkpoint`) cover every sharding mode.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmkit.errors import RmkitError
from rmkit.utils import lock

log = logging.getLogger(__name__)


@dataclass
class Run:
    cfg: Any
    accel: Any
    loaded: Any
    model: Any  # prepared (possibly DDP-wrapped) model: use for training forwards
    optimizer: Any
    scheduler: Any
    order: Any
    records: list[dict]
    image_root: Path
    out: Path
    total_steps: int
    logger: Any
    step: int = 0
    reference: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    fsdp: list = field(default_factory=list)  # FSDP2 modules of the model, root first
    resumed_from: Path | None = None  # the checkpoint this run resumed from
    resume_state: dict[str, Any] = field(default_factory=dict)  # its state.json
    image_roots: list[Path] = field(default_factory=list)  # where record images may come from

    @property
    def rank(self) -> int:
        return self.accel.process_index

    @property
    def world(self) -> int:
        return self.accel.num_processes

    @property
    def unwrapped(self):
        return self.accel.unwrap_model(self.model)

    def __getattr__(self, name: str) -> Any:  # run.backend, run.template, run.reward_fn
        extras = self.__dict__.get("extras", {})
        if name in extras:
            return extras[name]
        raise AttributeError(name)


def all_sum(accel, values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all processes (float64)."""
    import torch

    t = torch.tensor(values, dtype=torch.float64, device=accel.device)
    if accel.num_processes > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t.tolist()


def all_max(accel, values: list[float]) -> list[float]:
    import torch

    t = torch.tensor(values, dtype=torch.float64, device=accel.device)
    if accel.num_processes > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t.tolist()


def make_accelerator(cfg):
    """The Accelerator for this launch (CPU/gloo without CUDA), DeepSpeed batch sizes set.

    FSDP asked for on a CPU-only launch is applied by rmkit (see :mod:`rmkit.training.sharding`).
    """
    import torch
    from accelerate.utils import DistributedDataParallelKwargs

    from rmkit.training.sharding import describe, make

    vision_full = cfg.weights.mode == "full" and not (
        cfg.weights.freeze_vision_tower and cfg.weights.freeze_projector
    )
    ddp = DistributedDataParallelKwargs(find_unused_parameters=vision_full)
    accel = make(torch.cuda.is_available(), kwargs_handlers=[ddp])
    if not accel.is_main_process:
        logging.getLogger("rmkit").setLevel(logging.WARNING)
    plugin = getattr(accel.state, "deepspeed_plugin", None)
    if plugin is not None:
        # DeepSpeed counts micro-batches itself: tell it ours (no dataloader is prepared).
        b = cfg.batch
        plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=b.micro_batch_per_device,
            gradient_accumulation_steps=b.grad_accum_steps,
            train_batch_size=b.micro_batch_per_device * b.grad_accum_steps * accel.num_processes,
            gradient_clipping=cfg.optim.max_grad_norm or 0.0,
        )
    log.info(
        "%d process(es), %s, device %s; sharding: %s",
        accel.num_processes,
        accel.distributed_type,
        accel.device,
        describe(accel),
    )
    return accel


def sharded(accel) -> bool:
    """DeepSpeed or FSDP: parameters or optimizer state are split over the processes."""
    from rmkit.training.sharding import NONE, mode

    return mode(accel) != NONE


def uses_deepspeed(accel) -> bool:
    return str(accel.distributed_type).endswith("DEEPSPEED")


def _reshard_after_forward(accel) -> bool:
    plugin = getattr(accel.state, "fsdp_plugin", None)
    return bool(getattr(plugin, "reshard_after_forward", True)) if plugin is not None else True


@contextlib.contextmanager
def accumulate(run: Run, last: bool):
    """Gradient accumulation for one micro-batch: gradients sync across processes (and
    DeepSpeed steps) only on the ``last`` micro-batch of an optimizer step."""
    accel = run.accel
    if uses_deepspeed(accel):
        accel.gradient_state._set_sync_gradients(last)
        try:
            yield
        finally:
            accel.gradient_state._set_sync_gradients(True)
    elif run.fsdp:
        from rmkit.training.sharding import training_pass

        training_pass(run.fsdp, sync=last, reshard=_reshard_after_forward(accel))
        yield
    elif last:
        yield
    else:
        with accel.no_sync(run.model):
            yield


def backward(run: Run, loss) -> None:
    """``loss`` is already this micro-batch's share of the step mean; DeepSpeed divides by its
    accumulation count again, so undo that there."""
    if uses_deepspeed(run.accel):
        loss = loss * run.cfg.batch.grad_accum_steps
    run.accel.backward(loss)


def _check_output(out: Path, resume: bool) -> None:
    existing = [
        p.name for p in (out / "metrics.jsonl", out / "checkpoints", out / "final") if p.exists()
    ]
    if existing and not resume:
        raise RmkitError(
            f"output folder {out} already holds a run ({', '.join(existing)})",
            hint="pass --resume to continue it, or choose another --output",
        )


def setup_run(cfg, resume: bool, select=None) -> Run:
    """Load data and model, prepare for the launch, and resume from the latest checkpoint.

    ``select(loaded, records, image_root) -> records`` may drop records once the model (its
    tokenizer) is loaded, before the data order and the number of steps are fixed.
    """
    import torch
    from accelerate.utils import set_seed

    from rmkit.training.checkpoint import latest_checkpoint, load_checkpoint
    from rmkit.training.data import DataOrder, image_roots, load_training_records, total_steps
    from rmkit.training.metrics import MetricsLogger
    from rmkit.training.model import build_policy, build_reference, disable_dropout
    from rmkit.training.optim import build_optimizer, build_scheduler
    from rmkit.training.sharding import fsdp2_modules, gather_params, shard_model
    from rmkit.utils.io import write_text_atomic
    from rmkit.utils.redact import redact_secrets

    out = Path(cfg.output)
    accel = make_accelerator(cfg)
    output_lock = None
    if accel.is_main_process:
        # one run writes a folder at a time (SECURITY-REVIEW M6); only the main process of a
        # multi-process launch locks (its N processes share the output). Released by finish(),
        # at exit, or by the kernel when the process dies.
        output_lock = lock.acquire(out, what="train output")
        atexit.register(lock.release, output_lock)
        _check_output(out, resume)
        out.mkdir(parents=True, exist_ok=True)
        for tmp in (out / "checkpoints").glob(".tmp-step-*"):
            shutil.rmtree(tmp, ignore_errors=True)
    accel.wait_for_everyone()
    from rmkit.training.rollout import image_root_for

    records, path = load_training_records(
        cfg.data.path, cfg.data.split, cfg.stage, cfg.data.image_root
    )
    image_root = image_root_for(cfg, path)
    set_seed(cfg.seed)
    loaded = build_policy(cfg)
    if select is not None:
        records = select(loaded, records, image_root)
    per_step = cfg.batch.sequences_per_step if cfg.stage == "sft" else cfg.batch.prompts_per_step
    order = DataOrder(len(records), per_step, cfg.seed, cfg.data.shuffle)
    steps = total_steps(cfg.max_steps, cfg.epochs, order.steps_per_epoch)
    if cfg.stage == "rl":
        disable_dropout(loaded.model)
    reference = build_reference(cfg, loaded, accel.device)
    own_fsdp = getattr(accel, "rmkit_fsdp2", False)  # FSDP on the CPU: rmkit shards
    if own_fsdp:
        shard_model(loaded.model, accel)  # before the optimizer takes the (sharded) parameters
    optimizer = build_optimizer(loaded.model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, steps * cfg.optimizer_steps_per_step)
    model = loaded.model
    if not own_fsdp:
        model, optimizer = accel.prepare(model, optimizer)
    torch.manual_seed(cfg.seed + 1000 * accel.process_index)
    step, resume_at, state = 0, None, {}
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        state = load_checkpoint(accel, model, optimizer, scheduler, ckpt)
        order.load_state(state)
        step, resume_at = int(state["step"]), (int(state["metrics_offset"]), int(state["step"]))
    elif resume:
        log.info("no checkpoint in %s: starting from step 0", out)
    fsdp = fsdp2_modules(model)
    gather_params(fsdp)  # whole weights for rollouts until the first training pass
    if accel.is_main_process:
        import yaml

        write_text_atomic(
            out / "config.yaml",
            yaml.safe_dump(redact_secrets(cfg.model_dump(mode="json")), sort_keys=False),
        )
    if accel.is_main_process:
        log_sampling(cfg, loaded.model)
    logger = MetricsLogger(out, accel.is_main_process, cfg.logging.tensorboard, resume_at)
    run = Run(
        cfg, accel, loaded, model, optimizer, scheduler, order, records,
        image_root, out, steps, logger, step, reference,
        fsdp=fsdp, resumed_from=ckpt, resume_state=state,
        image_roots=image_roots(path, cfg.data.image_root),
    )  # fmt: skip
    run.extras["output_lock"] = output_lock
    return run


def log_sampling(cfg, model) -> None:
    """The run's effective sampling at its start (also in ``config.yaml``): for RL the rollout
    sampling and the loss's log-probs (a warning when they disagree), and for any run a note
    when the checkpoint's ``generation_config`` sets a repetition penalty or top-k that rmkit
    does not use (it samples with the recipe's values, neutral by default)."""
    from rmkit.generation.hf import log_checkpoint_sampling

    if cfg.stage == "rl":
        from rmkit.training.policy import sampling_notes

        for level, message in sampling_notes(cfg.rl):
            log.log(level, "%s", message)
    log_checkpoint_sampling(model)


def optimizer_step(run: Run) -> float:
    """Clip gradients, step optimizer and scheduler, zero gradients; return the gradient norm.

    Under DeepSpeed the engine has already clipped and stepped at the last micro-batch.
    """
    if uses_deepspeed(run.accel):
        run.scheduler.step()
        norm = run.model.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")
    from rmkit.training.sharding import to_float

    max_norm = run.cfg.optim.max_grad_norm
    params = [p for p in run.model.parameters() if p.requires_grad]
    if max_norm is not None:
        norm = to_float(run.accel.clip_grad_norm_(params, max_norm))
    else:
        import torch

        grads = [p.grad.detach() for p in params if p.grad is not None]
        norm = to_float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return norm


def after_step(run: Run, metrics: dict[str, float], bar, fields: dict[str, Any]) -> None:
    """Log (every N steps), update progress, checkpoint (every N steps)."""
    from rmkit.training.checkpoint import save_checkpoint
    from rmkit.training.evaluate import maybe_evaluate
    from rmkit.training.sharding import gather_params

    cfg = run.cfg
    gather_params(run.fsdp)  # FSDP2: whole weights for evaluation and the next rollout
    maybe_evaluate(run, metrics)
    if run.step % cfg.logging.every_steps == 0 or run.step == run.total_steps:
        run.logger.log(run.step, metrics)
    bar.update(1, **{k: v for k, v in fields.items() if v is not None})
    every = cfg.checkpoint.every_steps
    if every and run.step % every == 0 and run.step < run.total_steps:
        state = {"output": str(run.out), "metrics_offset": run.logger.offset(), **run.order.state()}
        save_checkpoint(
            run.accel,
            run.model,
            run.optimizer,
            run.scheduler,
            run.step,
            state,
            cfg.checkpoint.keep_last,
            hooks=run.extras.get("checkpoint_hooks") or (),
        )


def add_checkpoint_hook(run: Run, hook: Any) -> None:
    """Register ``hook`` (``name``, ``state_dict() -> dict`` of JSON, ``load_state_dict(d)``)
    so every checkpoint saves its state; on a resumed run its saved state is restored now.
    Call it on every process, before the first step of the loop."""
    from rmkit.training.checkpoint import load_hook

    run.extras.setdefault("checkpoint_hooks", []).append(hook)
    if run.resumed_from is not None:
        load_hook(run.resumed_from, hook)


def finish(run: Run) -> dict[str, Any]:
    """Write ``final/`` (and ``merged/``), the curves PNG; close the logs. Returns a summary."""
    from rmkit.training.checkpoint import export_merged, save_final
    from rmkit.training.metrics import CURVES, METRICS, plot_curves

    final = save_final(run.accel, run.model, run.loaded, run.out)
    run.logger.close()
    summary: dict[str, Any] = {"output": str(run.out), "final": str(final), "steps": run.step}
    if run.accel.is_main_process:
        if run.cfg.export_merged:
            summary["merged"] = str(export_merged(final, run.cfg, run.out))
        if run.cfg.logging.plot:
            png = plot_curves(run.out / METRICS, run.out / CURVES)
            summary["curves"] = str(png) if png else None
    run.accel.wait_for_everyone()
    run.accel.end_training()
    lock.release(run.extras.pop("output_lock", None))
    return summary


class StepTimer:
    """Wall-clock time per phase of a step (``step_time/<phase>`` metrics)."""

    def __init__(self) -> None:
        self.t0 = self.last = time.perf_counter()
        self.times: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.times[f"step_time/{phase}"] = (
            self.times.get(f"step_time/{phase}", 0.0) + now - self.last
        )
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.t0
