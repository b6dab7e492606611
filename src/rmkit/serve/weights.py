"""Replacing the served model's weights from a folder (full-weight RL sync).

``POST /collective_rpc`` with ``{"method": "reload_weights", "kwargs": {"weights_path": DIR}}``
- vLLM's development endpoint for the same job, so one client drives both servers - loads the
``save_pretrained`` safetensors in ``DIR`` into the served model in place (values are cast to
the served dtype; weights tied to another, such as an output head tied to the input embeddings,
follow it). ``POST /reset_prefix_cache`` answers success (rmkit serve keeps no prefix cache).

Enabled only by ``--enable-weight-reload``; ``--weights-root`` confines ``DIR`` (after resolving
``..`` and symlinks). The folder is checked before anything is copied: safetensors only
(pickled ``.bin`` files are refused), every tensor a weight of the model with the same shape,
and every weight of the model present (or tied to one that is). A model served with runtime or
start-up adapters cannot reload: its weights are not plain names. Runs on the model-worker
thread, so no generation sees half-loaded weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rmkit.serve.protocol import ApiError

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"


def _bad(message: str) -> ApiError:
    return ApiError(400, message, "kwargs.weights_path")


def weight_files(folder: Path, given: str) -> list[Path]:
    """The safetensors files of a ``save_pretrained`` folder (single file or sharded)."""
    if (folder / INDEX).is_file():
        try:
            shards = sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            raise _bad(f"weights_path '{given}': {INDEX} is not a valid index") from None
        files = [folder / s for s in shards]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files or not all(f.is_file() and f.parent == folder for f in files):
        raise _bad(
            f"weights_path '{given}' holds no safetensors weights (pickled .bin files are not "
            "loaded)"
        )
    return files


def resolve_folder(given: str, root: Path | None) -> Path:
    path = Path(given).expanduser()
    if root is not None:
        path = (root / path).resolve() if not path.is_absolute() else path.resolve()
        if not path.is_relative_to(root):
            raise _bad(f"weights_path '{given}' is outside the server's --weights-root")
    else:
        path = path.resolve()
    if not path.is_dir():
        raise _bad(f"weights_path '{given}': no such folder")
    return path


def reload_weights(model: Any, given: str, root: Path | None) -> None:
    """Copy the weights saved in ``given`` into ``model`` (see the module docstring)."""
    import torch
    from safetensors import safe_open

    if getattr(model, "peft_config", None):
        raise _bad("this server runs LoRA adapters; weights can only be reloaded without them")
    folder = resolve_folder(given, root)
    params = dict(model.named_parameters(remove_duplicate=False))
    params.update(dict(model.named_buffers(remove_duplicate=False)))
    files = weight_files(folder, given)
    seen: set[str] = set()
    for f in files:  # check every name and shape before copying anything
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                if name not in params:
                    raise _bad(f"weights_path '{given}': '{name}' is not a weight of the model")
                shape = tuple(fh.get_slice(name).get_shape())
                if shape != tuple(params[name].shape):
                    raise _bad(
                        f"weights_path '{given}': '{name}' has shape {shape}, the model's is "
                        f"{tuple(params[name].shape)}"
                    )
                seen.add(name)
    loaded_ptrs = {params[n].data_ptr() for n in seen}
    missing = [
        n for n, p in model.named_parameters(remove_duplicate=False)
        if n not in seen and p.data_ptr() not in loaded_ptrs
    ]  # fmt: skip
    if missing:
        raise _bad(
            f"weights_path '{given}' lacks {len(missing)} weight(s) of the model, e.g. {missing[:3]}"
        )
    with torch.no_grad():
        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                for name in fh.keys():  # noqa: SIM118
                    target = params[name]
                    target.copy_(fh.get_tensor(name).to(target.device, target.dtype))
    model.eval()
    log.info("reloaded %d weight tensor(s) from %s", len(seen), folder)
