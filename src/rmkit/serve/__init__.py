"""OpenAI-compatible HTTP server for a local model (``rmkit serve``); see ``docs/serving.md``.

Layout: :mod:`~rmkit.serve.protocol` (request models and their conversion),
:mod:`~rmkit.serve.responses` (response bodies, streamed chunks), :mod:`~rmkit.serve.app` (the
FastAPI app and its guard), :mod:`~rmkit.serve.engine` and :mod:`~rmkit.serve.worker` (the
model-worker thread and batching), :mod:`~rmkit.serve.lora` (runtime LoRA adapters),
:mod:`~rmkit.serve.score` (``/v1/score``), :mod:`~rmkit.serve.server` (uvicorn, the CLI loop).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rmkit.errors import RmkitError


def build_app(
    model: str,
    *,
    adapter: str | None = None,
    dtype: str = "float32",
    batch_size: int = 16,
    api_key_env: str | None = None,
    max_request_bytes: int | None = None,
    device: str = "auto",
    loaded: Any = None,
    served_model_name: str | None = None,
    enable_lora: bool = False,
    lora_root: str | None = None,
    max_loras: int = 4,
    max_queue: int = 256,
    enable_weight_reload: bool = False,
    weights_root: str | None = None,
    merge_lora: bool = False,
    logprobs_mode: str = "raw_logprobs",
    limits: Any = None,
):
    """Load ``model`` (unless ``loaded`` is given) and return the FastAPI app serving it.

    ``api_key_env`` names the environment variable holding the key clients must send; it must
    be set when given. ``device``: "auto" (CUDA when available), "cpu" or "cuda".
    ``served_model_name``: the name clients use (default: ``model``, or the folder's name when
    ``model`` is a path; the spec and the resolved folder are accepted as aliases but never
    listed). ``enable_lora`` adds ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``;
    ``lora_root`` confines their paths; ``max_loras`` caps the adapters loaded at once.
    ``max_queue``: requests waiting for the model before the server answers 503.
    ``enable_weight_reload`` adds ``/collective_rpc`` (``reload_weights`` only) and
    ``/reset_prefix_cache`` for full-weight RL sync; ``weights_root`` confines their paths.
    ``merge_lora``: generate through a runtime adapter with it folded into the weights.
    ``logprobs_mode``: ``raw_logprobs`` (the model's distribution, temperature 1) or
    ``processed_logprobs`` (after the repetition penalty, temperature, top-k and top-p: what
    was sampled from), as vLLM's. ``limits``: the per-request
    :class:`~rmkit.serve.protocol.Limits` (default: ``Limits()``, see docs/serving.md).
    """
    from rmkit.serve.app import create_app
    from rmkit.serve.engine import ServeEngine

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise RmkitError(
                f"--api-key-env names ${api_key_env}, which is not set",
                hint=f"export {api_key_env}=<key> first, or drop --api-key-env to serve without a key",
            )
    if max_request_bytes is not None and max_request_bytes < 1024:
        raise RmkitError(f"--max-request-bytes must be at least 1024 (got {max_request_bytes})")
    if max_loras < 1:
        raise RmkitError(f"--max-loras must be at least 1 (got {max_loras})")
    for flag, folder in (("--lora-root", lora_root), ("--weights-root", weights_root)):
        if folder is not None and not Path(folder).expanduser().is_dir():
            raise RmkitError(f"{flag} '{folder}' is not a folder")
    from rmkit.generation.hf import place_model

    if loaded is None:
        from rmkit.models.loading import load_model

        loaded = load_model(model, dtype=dtype, adapter=adapter)
    place_model(loaded, device)
    name, aliases = _served_names(model, served_model_name, loaded)
    engine = ServeEngine(
        loaded,
        served_name=name,
        aliases=aliases,
        batch_size=batch_size,
        enable_lora=enable_lora,
        lora_root=lora_root,
        max_loras=max_loras,
        max_queue=max_queue,
        enable_weight_reload=enable_weight_reload,
        weights_root=weights_root,
        merge_lora=merge_lora,
        logprobs_mode=logprobs_mode,
        limits=limits,
    )
    app = create_app(engine, api_key=api_key, max_request_bytes=max_request_bytes)
    app.state.auth = api_key is not None
    return app


def _served_names(model: str, served: str | None, loaded: Any) -> tuple[str, tuple[str, ...]]:
    """(listed name, other accepted names): a path is never listed, only accepted."""
    aliases = {model, str(loaded.path)}
    if served:
        name = served
    elif Path(model).expanduser().exists():
        name = Path(model).expanduser().resolve().name
    else:
        name = model
    aliases.discard(name)
    return name, tuple(sorted(aliases))
