"""Atomic checkpoints and the final output folder.

A checkpoint ``DIR/checkpoints/step-K/`` holds::

    state.json              step, process count, sharding mode, data position (epoch, index,
                            shuffle seed), metrics offset, and any key the loop adds
    scheduler.pt            learning-rate scheduler state
    rng-rank{R}.pt          python / numpy / torch (and CUDA) RNG states of process R
    hooks.json              the state of each checkpoint hook, by name (when the run has hooks)

and the model and optimizer state, written as the sharding mode (:mod:`rmkit.training.sharding`)
keeps them::

    none (one process, DDP)   trainable.safetensors   every trainable parameter by name
                              optimizer.pt            optimizer state
    fsdp2                     dcp/                    torch.distributed.checkpoint of the trainable
                                                      parameters and the optimizer state (each
                                                      process writes its shards)
    deepspeed-zero*, fsdp1    accelerate/             accelerate's ``save_state``: DeepSpeed's
                                                      per-rank optimizer (ZeRO-3: and parameter)
                                                      partitions, or FSDP1's state

It is written into ``checkpoints/.tmp-step-K`` and renamed when complete (``state.json`` is
written last, after every process has written its part), so a killed run never leaves a
checkpoint that looks complete but is not. Only the newest ``keep_last`` checkpoints are kept.
A checkpoint resumes only a run with the same number of processes and the same sharding mode.

Checkpoint hooks: objects with a ``name``, ``state_dict() -> dict`` (JSON-serialisable) and
``load_state_dict(d)``, for state of the loop that lives outside the model (e.g. a rollout
queue). ``state_dict`` is called on every process; the main process's result is written.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rmkit.errors import RmkitError
from rmkit.utils.io import read_json, write_json_atomic

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
HOOKS = "hooks.json"
_STEP_RE = re.compile(r"^step-(\d+)$")


def list_checkpoints(output: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``output/checkpoints`` as (step, folder), oldest first."""
    folder = Path(output) / CHECKPOINTS
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = _STEP_RE.match(p.name)
            if m and (p / "state.json").is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output: Path) -> Path | None:
    found = list_checkpoints(output)
    return found[-1][1] if found else None


def rng_state() -> dict[str, Any]:
    """Every RNG state as plain data (ints, lists, tensors): loadable with ``weights_only``."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [
            kind,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    if isinstance(keys, torch.Tensor):
        keys = keys.numpy()
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def safe_load(path: Path, *, legacy_numpy: bool = False) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code.

    ``legacy_numpy`` also allows numpy arrays and dtypes (RNG files written before the RNG
    state was stored as plain data); no callable beyond numpy's array reconstruction is
    allowed. A file that needs anything else is refused with an error naming it.
    """
    import torch

    try:
        if not legacy_numpy:
            return torch.load(path, map_location="cpu", weights_only=True)
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError) as exc:
        raise RmkitError(
            f"refusing to load {path}: it is not a plain-data checkpoint file "
            f"({str(exc).splitlines()[0][:200]})",
            hint="checkpoints are loaded with torch.load(weights_only=True); only resume "
            "checkpoints written by rmkit that you trust",
        ) from exc


def _numpy_globals() -> list[Any]:
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    allowed: list[Any] = [_reconstruct, np.ndarray, np.dtype]
    if hasattr(np, "dtypes"):
        allowed.append(np.dtypes.UInt32DType)
    return allowed


def trainable_state(model) -> dict[str, Any]:
    """Name -> CPU copy of every trainable parameter of the (unwrapped) model."""
    return {
        n: p.detach().to("cpu").contiguous().clone()
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def save_checkpoint(
    accel,
    model,
    optimizer,
    scheduler,
    step: int,
    state: dict,
    keep_last: int,
    hooks: Sequence[Any] = (),
) -> Path:
    """Write checkpoint ``step`` atomically (all processes call this). ``state`` (JSON) goes
    into ``state.json`` without its ``output`` key; ``hooks`` into ``hooks.json``."""
    import torch

    from rmkit.training.sharding import mode

    root = Path(state["output"]) / CHECKPOINTS
    tmp, final = root / f".tmp-step-{step}", root / f"step-{step}"
    hook_states = hooks_state(hooks)
    if accel.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accel.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-rank{accel.process_index}.pt")
    sharding = mode(accel)
    _save_model_optimizer(accel, model, optimizer, tmp, sharding)
    accel.wait_for_everyone()
    if accel.is_main_process:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if hook_states:
            write_json_atomic(tmp / HOOKS, hook_states)
        meta = {k: v for k, v in state.items() if k != "output"}
        write_json_atomic(
            tmp / "state.json",
            {"step": step, "world_size": accel.num_processes, "sharding": sharding, **meta},
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for _, old in list_checkpoints(root.parent)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint saved: %s", final)
    accel.wait_for_everyone()
    return final


def _save_model_optimizer(accel, model, optimizer, folder: Path, sharding: str) -> None:
    import torch
    from safetensors.torch import save_file

    from rmkit.training.sharding import FSDP2, NONE

    if sharding == NONE:
        if accel.is_main_process:
            save_file(
                trainable_state(accel.unwrap_model(model)), str(folder / "trainable.safetensors")
            )
            torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    elif sharding == FSDP2:
        import torch.distributed.checkpoint as dcp

        from rmkit.training.sharding import fsdp2_modules, sharded_params

        with sharded_params(fsdp2_modules(model)):
            model_sd, optim_sd = _dcp_state(model, optimizer)
            dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(folder / "dcp"))
    else:  # DeepSpeed (each rank writes its partitions) or FSDP1, through accelerate
        accel.save_state(str(folder / "accelerate"), **_deepspeed_kwargs(model, sharding, "save"))


def _dcp_state(model, optimizer):
    """(model, optimizer) state dicts of the trainable parameters, sharded (DTensors)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    return get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))


def _deepspeed_kwargs(model, sharding: str, what: str) -> dict[str, Any]:
    """LoRA under DeepSpeed: leave the frozen base weights out of the checkpoint."""
    if not sharding.startswith("deepspeed") or all(p.requires_grad for p in model.parameters()):
        return {}
    return {"exclude_frozen_parameters": True} if what == "save" else {"load_module_strict": False}


def check_compatible(accel, folder: Path, state: dict) -> None:
    """Refuse a checkpoint written by another process count or sharding mode."""
    from rmkit.training.sharding import NONE, mode

    saved_world = int(state.get("world_size", 1))
    if saved_world != accel.num_processes:
        raise RmkitError(
            f"checkpoint {folder} was written by {saved_world} process(es), this run "
            f"has {accel.num_processes}",
            hint="resume with the same number of processes",
        )
    saved, now = state.get("sharding", NONE), mode(accel)
    if saved != now:
        raise RmkitError(
            f"checkpoint {folder} was written with sharding {saved!r}, this run uses {now!r}",
            hint="resume with the same launch (the same accelerate config: DDP, FSDP or the same "
            "DeepSpeed ZeRO stage)",
        )


def load_checkpoint(accel, model, optimizer, scheduler, folder: Path) -> dict:
    """Restore weights, optimizer, scheduler and this process's RNG; return ``state.json``."""
    state = read_json(folder / "state.json")
    check_compatible(accel, folder, state)
    _load_model_optimizer(accel, model, optimizer, folder, state.get("sharding", "none"))
    scheduler.load_state_dict(safe_load(folder / "scheduler.pt"))
    set_rng_state(safe_load(folder / f"rng-rank{accel.process_index}.pt", legacy_numpy=True))
    log.info(
        "resumed from %s (step %d, sharding %s)",
        folder,
        state["step"],
        state.get("sharding", "none"),
    )
    return state


def _mismatch(folder: Path, detail: str) -> RmkitError:
    return RmkitError(
        f"checkpoint {folder} does not match the model ({detail})",
        hint="resume with the same recipe (model, weights mode, LoRA settings)",
    )


def _load_model_optimizer(accel, model, optimizer, folder: Path, sharding: str) -> None:
    import torch
    from safetensors.torch import load_file

    from rmkit.training.sharding import FSDP2, NONE

    if sharding == NONE:
        weights = load_file(str(folder / "trainable.safetensors"))
        unwrapped = accel.unwrap_model(model)
        params = dict(unwrapped.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
        unknown = [n for n in weights if n not in params]
        if missing or unknown:
            raise _mismatch(
                folder,
                f"{len(missing)} trainable parameters missing, {len(unknown)} unknown, "
                f"e.g. {(missing + unknown)[:2]}",
            )
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        optimizer.load_state_dict(safe_load(folder / "optimizer.pt"))
    elif sharding == FSDP2:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        from rmkit.training.sharding import fsdp2_modules, sharded_params

        with sharded_params(fsdp2_modules(model)):
            model_sd, optim_sd = _dcp_state(model, optimizer)
            try:
                dcp.load(
                    {"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(folder / "dcp")
                )
            except (RuntimeError, KeyError, ValueError) as exc:
                raise _mismatch(folder, str(exc).splitlines()[0][:300]) from exc
            set_state_dict(
                model,
                getattr(optimizer, "optimizer", optimizer),
                model_state_dict=model_sd,
                optim_state_dict=optim_sd,
                # frozen weights are not in the checkpoint (dcp.load has checked the rest)
                options=StateDictOptions(ignore_frozen_params=True, strict=False),
            )
    else:
        accel.load_state(str(folder / "accelerate"), **_deepspeed_kwargs(model, sharding, "load"))


def hooks_state(hooks: Sequence[Any]) -> dict[str, Any]:
    """``{hook.name: hook.state_dict()}``, checked to be JSON with unique names."""
    out: dict[str, Any] = {}
    for hook in hooks:
        name = getattr(hook, "name", None)
        if not isinstance(name, str) or not name or name in out:
            raise RmkitError(
                f"checkpoint hook {hook!r} needs a unique string `name` (got {name!r})"
            )
        value = hook.state_dict()
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise RmkitError(f"checkpoint hook {name!r}: state_dict() is not JSON ({exc})") from exc
        out[name] = value
    return out


def load_hook(folder: Path, hook: Any) -> bool:
    """Restore ``hook`` from ``folder/hooks.json``; False (with a warning) when it holds no
    state for it."""
    path = Path(folder) / HOOKS
    saved = read_json(path) if path.is_file() else {}
    if hook.name not in saved:
        log.warning("checkpoint %s holds no state for hook %r: it starts fresh", folder, hook.name)
        return False
    hook.load_state_dict(saved[hook.name])
    return True


def save_final(accel, model, loaded, output: Path) -> Path:
    """``output/final``: a PEFT adapter folder or a full ``save_pretrained`` model + processor."""
    final = Path(output) / "final"
    accel.wait_for_everyone()
    # every process: gathers sharded weights (FSDP, ZeRO-3, rmkit's FSDP2 on the CPU)
    state = accel.get_state_dict(model)
    if accel.is_main_process:
        tmp = Path(output) / ".tmp-final"
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped = accel.unwrap_model(model)
        if hasattr(unwrapped, "peft_config"):
            unwrapped.save_pretrained(str(tmp), selected_adapters=["default"], state_dict=state)
        else:
            unwrapped.save_pretrained(str(tmp), state_dict=state)
        loaded.processor.save_pretrained(str(tmp))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        log.info("final model saved: %s", final)
    accel.wait_for_everyone()
    return final


def export_merged(final: Path, cfg, output: Path) -> Path:
    """``output/merged``: the adapter in ``final`` merged into unquantised base weights."""
    from rmkit.models.loading import load_model

    merged_dir = Path(output) / "merged"
    tmp = Path(output) / ".tmp-merged"
    shutil.rmtree(tmp, ignore_errors=True)
    if not (final / "adapter_config.json").is_file():
        shutil.copytree(final, tmp)
    else:
        # An adapter folder names its base model; loading it without quantization merges
        # QLoRA adapters into full-precision weights.
        loaded = load_model(
            final, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code
        )
        loaded.model.merge_and_unload().save_pretrained(str(tmp))
        loaded.processor.save_pretrained(str(tmp))
    if merged_dir.exists():
        shutil.rmtree(merged_dir)
    os.replace(tmp, merged_dir)
    log.info("merged model saved: %s", merged_dir)
    return merged_dir


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
