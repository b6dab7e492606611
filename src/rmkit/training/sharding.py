"""How the training state is spread over processes: the sharding mode of a launch, rmkit's own
FSDP2 on the CPU, whole weights for generation, and full state dicts from sharded models.

Modes (:func:`mode`), recorded in every checkpoint:

- ``none``: one process, or data parallel (DDP): every process holds the whole model and
  optimizer state.
- ``fsdp2``: torch FSDP2 (``fully_shard``): parameters, gradients and optimizer state sharded.
  On GPUs accelerate applies it (``fsdp_version: 2``). On a CPU-only launch accelerate silently
  falls back to DDP, so when the launch asks for FSDP (``ACCELERATE_USE_FSDP=true``, set by
  ``accelerate launch --use_fsdp`` or an FSDP config file) and the Accelerator reports
  ``MULTI_CPU``, rmkit applies ``fully_shard`` itself: to every decoder layer (the model's
  ``_no_split_modules``, or ``FSDP_TRANSFORMER_CLS_TO_WRAP``) and to the root transformers
  model. Both are checkpointed the same way, with ``torch.distributed.checkpoint``.
- ``fsdp1``: accelerate's FSDP version 1 (checkpointed with accelerate's ``save_state``).
- ``deepspeed-zero{1,2,3}``: accelerate's DeepSpeed (``save_state``: each rank writes its
  optimizer partition, ZeRO-3 its parameter partition too). On a CPU-only machine accelerate
  counts DeepSpeed's processes only when it is given the gloo backend and not told ``cpu=True``;
  :func:`accelerator_kwargs` does that.

FSDP2 parameters are kept whole ("gathered") between optimizer steps: rollouts, evaluation and
the no-grad log-prob passes then run on whole weights, without collectives (processes generate
different numbers of tokens) and with LoRA folding working on plain tensors. A training
micro-batch reshards its layers after forward as configured, backward leaves every parameter
sharded for the optimizer step, and checkpoints and state dicts reshard first
(:func:`sharded_params`). The math is unchanged: FSDP2 averages gradients over processes as
DDP does.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

NONE, FSDP2 = "none", "fsdp2"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def launch_wants_fsdp() -> bool:
    """The launch asks for FSDP (``accelerate launch --use_fsdp`` / an FSDP config file)."""
    return _env_true("ACCELERATE_USE_FSDP")


def launch_wants_deepspeed() -> bool:
    return _env_true("ACCELERATE_USE_DEEPSPEED")


def accelerator_kwargs(cuda: bool) -> dict[str, Any]:
    """Keyword arguments for the Accelerator of this launch (CPU, or DeepSpeed on the CPU)."""
    if not cuda and launch_wants_deepspeed() and int(os.environ.get("LOCAL_RANK", -1)) != -1:
        from accelerate.utils import InitProcessGroupKwargs

        # With cpu=True accelerate ignores DeepSpeed; with neither cpu=True nor a backend it
        # starts DeepSpeed but reports one process on every rank.
        return {"cpu": False, "kwargs_handlers": [InitProcessGroupKwargs(backend="gloo")]}
    return {"cpu": not cuda, "kwargs_handlers": []}


@functools.cache
def _accelerator_class():
    from accelerate import Accelerator

    class TrainAccelerator(Accelerator):
        """An Accelerator whose ``get_state_dict`` also gathers FSDP2 models that rmkit sharded
        itself (accelerate does not know about them), and reshards gathered FSDP2 parameters
        first. Every process must call it; the main process gets the full state dict."""

        rmkit_fsdp2 = False  # rmkit applied fully_shard itself (CPU)

        def get_state_dict(self, model, unwrap: bool = True):
            modules = fsdp2_modules(model)
            if not modules:
                return super().get_state_dict(model, unwrap=unwrap)
            return full_state_dict(model, modules)

    return TrainAccelerator


def make(cuda: bool, **kwargs):
    """The Accelerator (see :func:`accelerator_kwargs`), with rmkit's FSDP2 switched on when
    the launch asks for FSDP that accelerate did not engage on the CPU."""
    opts = accelerator_kwargs(cuda)
    opts["kwargs_handlers"] = opts["kwargs_handlers"] + kwargs.pop("kwargs_handlers", [])
    accel = _accelerator_class()(**opts, **kwargs)
    kind = str(accel.distributed_type).rsplit(".", 1)[-1]
    if launch_wants_fsdp() and kind != "FSDP":
        if kind == "MULTI_CPU":
            accel.rmkit_fsdp2 = True
        elif accel.num_processes > 1:
            log.warning("the launch asks for FSDP but accelerate runs %s: no sharding", kind)
    if launch_wants_deepspeed() and kind != "DEEPSPEED" and accel.num_processes > 1:
        log.warning("the launch asks for DeepSpeed but accelerate runs %s: no sharding", kind)
    return accel


def mode(accel) -> str:
    """The sharding mode of ``accel`` (module docstring)."""
    if getattr(accel, "rmkit_fsdp2", False):
        return FSDP2
    kind = str(accel.distributed_type).rsplit(".", 1)[-1]
    if kind == "DEEPSPEED":
        stage = accel.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
        return f"deepspeed-zero{stage.get('stage', 0)}"
    if kind == "FSDP":
        return FSDP2 if getattr(accel, "is_fsdp2", False) else "fsdp1"
    return NONE


def describe(accel) -> str:
    m = mode(accel)
    if getattr(accel, "rmkit_fsdp2", False):
        return (
            "FSDP2 applied by rmkit (the launch asks for FSDP; accelerate runs MULTI_CPU on a "
            "CPU-only machine): fully_shard per decoder layer and on the root"
        )
    return {
        NONE: "none (replicated model and optimizer)",
        FSDP2: "FSDP2 by accelerate",
        "fsdp1": "FSDP (version 1) by accelerate",
    }.get(m, f"DeepSpeed ZeRO-{m[-1]} by accelerate")


def shard_model(model, accel) -> int:
    """Apply FSDP2 to ``model`` (a transformers model, or a PEFT model around one): every
    decoder layer, then the transformers model as the root. Returns the number of layers."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from rmkit.errors import RmkitError

    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(root, "is_loaded_in_4bit", False) or getattr(root, "is_loaded_in_8bit", False):
        raise RmkitError(
            "FSDP on the CPU cannot shard quantized (QLoRA) weights",
            hint="train QLoRA with data parallel processes (recipes/accelerate/cpu-2proc.yaml)",
        )
    names = {
        n.strip()
        for n in os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",")
        if n.strip()
    } or set(getattr(root, "_no_split_modules", None) or ())
    layers = [m for m in root.modules() if type(m).__name__ in names]
    if not layers:
        raise RmkitError(
            f"FSDP: no decoder layer to shard in {type(root).__name__} (looked for {sorted(names)})",
            hint="set FSDP_TRANSFORMER_CLS_TO_WRAP (fsdp_transformer_layer_cls_to_wrap) to the "
            "model's decoder layer class",
        )
    kinds = "/".join(sorted({type(m).__name__ for m in layers}))
    mesh = init_device_mesh(accel.device.type, (accel.num_processes,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(root, mesh=mesh)
    log.info("FSDP2: %d %s layer(s) and the root (%s) sharded over %d processes",
             len(layers), kinds, type(root).__name__.removeprefix("FSDP"),
             accel.num_processes)  # fmt: skip
    return len(layers)


def fsdp2_modules(model) -> list:
    """The FSDP2 modules in ``model``, outermost (the root) first."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - old torch
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def gather_params(modules: list) -> None:
    """Make every FSDP2 parameter whole and keep it whole through forwards (generation,
    evaluation, no-grad passes) until the next training pass or :func:`release_params`."""
    if not modules:
        return
    state = modules[0]._get_fsdp_state() if hasattr(modules[0], "_get_fsdp_state") else None
    if state is not None:
        # the root must be initialised before a forward that enters below it (generate())
        state._lazy_init()
    for m in modules:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)


def release_params(modules: list) -> None:
    """Shard every FSDP2 parameter again (before state dicts and checkpoints)."""
    for m in modules:
        m.reshard()


def training_pass(modules: list, sync: bool, reshard: bool = True) -> None:
    """Set up a training micro-batch: layers reshard after forward (``reshard``; the root never
    does, as torch's default), gradients are reduce-scattered only when ``sync`` (the last
    micro-batch of an optimizer step; earlier ones accumulate locally)."""
    for i, m in enumerate(modules):
        m.set_reshard_after_forward(reshard and i > 0, recurse=False)
        m.set_requires_gradient_sync(sync, recurse=False)


@contextlib.contextmanager
def sharded_params(modules: list):
    """Sharded parameters inside (what the optimizer and DCP see), whole again after."""
    release_params(modules)
    try:
        yield
    finally:
        gather_params(modules)


def full_state_dict(model, modules: list | None = None) -> dict:
    """The full (unsharded) state dict of an FSDP2 model on the main process, on the CPU;
    an empty dict on the others. Every process must call this."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    modules = fsdp2_modules(model) if modules is None else modules
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    with sharded_params(modules):
        return get_model_state_dict(model, options=opts)


def to_float(value) -> float:
    """A float from a (possibly DTensor) scalar: gradient norms under FSDP2 are DTensors."""
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return float(value)
