"""Generation backends behind one interface (see :mod:`rmkit.generation.base`).

``make_backend`` picks one: with ``base_url`` an :class:`~rmkit.generation.openai_api.OpenAIBackend`
for that server, otherwise a local :class:`~rmkit.generation.hf.HFBackend` for ``model`` (a short
name, a folder, a hub id, or an already loaded model). Heavy modules load only when used.
Config sections describe a backend with :class:`rmkit.generation.config.BackendConfig`, whose
``build()`` calls ``make_backend`` with the fields that apply.
"""

from __future__ import annotations

from typing import Any

from rmkit.errors import RmkitError
from rmkit.generation.base import Backend, Completion, SamplingParams

__all__ = ["Backend", "Completion", "SamplingParams", "make_backend"]

_LOAD_KEYS = ("dtype", "quantization", "adapter", "trust_remote_code", "min_pixels", "max_pixels")
_HF_KEYS = ("batch_size", "device", "decoder")
_API_KEYS = (
    "api_key_env",
    "concurrency",
    "max_retries",
    "timeout",
    "cache_dir",
    "backoff_base",
    "backoff_max",
    "retry_after_max",
    "on_error",
    "max_tokens_field",
    "jitter_seed",
    "greedy_empty_retries",
    "explicit_sampling",
)


def make_backend(
    model: Any = None, base_url: str | None = None, api_model: str | None = None, **kw: Any
) -> Backend:
    """Build a backend.

    - ``base_url`` given: ``OpenAIBackend(base_url, api_model or model, **kw)``; ``kw`` may hold
      api_key_env, concurrency, max_retries, timeout, cache_dir and the other OpenAIBackend options.
    - otherwise: ``model`` is a model spec for :func:`rmkit.models.loading.load_model` (``kw`` may
      hold dtype, quantization, adapter, trust_remote_code, min_pixels, max_pixels) or a loaded
      model; the result is ``HFBackend(loaded, batch_size=kw.get("batch_size", 16),
      decoder=kw.get("decoder", "auto"))``. A model loaded here is put on ``device`` ("auto":
      CUDA when available; "cpu"; "cuda").

    Unknown keyword arguments raise :class:`RmkitError` naming them.
    """
    if base_url:
        name = api_model or model
        if not isinstance(name, str) or not name:
            raise RmkitError(
                "an API backend needs a model name", hint="set api_model (the server's model id)"
            )
        _check_keys(kw, _API_KEYS, "OpenAI-compatible backend")
        from rmkit.generation.openai_api import OpenAIBackend

        return OpenAIBackend(base_url, name, **kw)
    if model is None:
        raise RmkitError(
            "no model to generate with",
            hint="give a model (name or folder) or a base_url for an API",
        )
    _check_keys(kw, _LOAD_KEYS + _HF_KEYS, "local backend")
    from rmkit.generation.hf import HFBackend, place_model

    batch_size = kw.pop("batch_size", 16)
    device = kw.pop("device", "auto")
    decoder = kw.pop("decoder", "auto")
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        from rmkit.models.loading import load_model

        model = load_model(str(model), **kw)
        place_model(model, device)
    elif kw:
        raise RmkitError(f"loading options {sorted(kw)} given for a model that is already loaded")
    return HFBackend(model, batch_size=batch_size, decoder=decoder)


def _check_keys(kw: dict, allowed: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise RmkitError(
            f"unknown option(s) for the {what}: {', '.join(unknown)}",
            hint=f"allowed: {', '.join(allowed)}",
        )
