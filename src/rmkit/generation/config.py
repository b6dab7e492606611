"""The one configuration model of a generation backend: :class:`BackendConfig`.

Every config section that names something to generate with holds these keys: eval's ``judge``,
distill's ``teacher`` and ``filters.consistency.judge``, the pipeline's ``caption`` stage (flat,
next to its own keys) and the consistency reward's ``options``. A section is either a local
model (``model`` and the keys after it, run in-process by
:class:`~rmkit.generation.hf.HFBackend`) or an OpenAI-compatible server (``base_url`` +
``api_model`` and the keys after them, :class:`~rmkit.generation.openai_api.OpenAIBackend`);
the keys of the other kind are kept but unused. :meth:`BackendConfig.build` turns it into a
backend through :func:`rmkit.generation.make_backend`, the low-level factory.

A third way: ``model`` plus ``launch`` starts a server for that model (vLLM, or ``rmkit
serve``; :mod:`rmkit.generation.launch`) when the backend is built, and talks to it as to any
API; closing the backend stops the server. RL's rollout server
(:class:`rmkit.training.config.RolloutServerConfig`) is this model too, with ``launch``
serving the policy.

A section may be empty ("none yet": eval and distill fill it from options and say what is
missing in their own words); a subclass that always needs one sets ``backend_required``.
Rule errors name each key by its dotted path in the whole config (``judge.base_url needs
judge.api_model``): see :func:`rmkit.config.validate.field_rule`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from rmkit.config.validate import StrictModel, field_rule
from rmkit.generation import _API_KEYS, _HF_KEYS, _LOAD_KEYS, Backend, make_backend
from rmkit.generation.launch import LaunchConfig

LOCAL_KEYS = ("model", "adapter", "dtype", "quantization", "batch_size", "device", "decoder")
API_KEYS = ("base_url", "api_model", "api_key_env", "concurrency", "max_retries", "timeout",
            "backoff_base", "max_tokens_field", "explicit_sampling")  # fmt: skip
# make_backend options that only one kind takes: build() drops those of the other kind.
_ONLY_LOCAL = frozenset(_LOAD_KEYS + _HF_KEYS) - frozenset(_API_KEYS)
_ONLY_API = frozenset(_API_KEYS) - frozenset(_LOAD_KEYS + _HF_KEYS)


class BackendConfig(StrictModel):
    """What generates: a local model (``model``) or an OpenAI-compatible server (``base_url``)."""

    backend_required: ClassVar[bool] = False
    api_model_required: ClassVar[bool] = True  # False: asked from the server's /v1/models

    # A local model (HFBackend, in-process).
    model: str | None = Field(None, description="local folder, built-in short name or hub id")
    adapter: str | None = Field(None, description="PEFT adapter folder applied to `model`")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    quantization: Literal["nf4"] | None = None
    batch_size: int = Field(16, ge=1, description="local: sequences per generate call")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    decoder: Literal["auto", "generate"] = Field(
        "auto",
        description="local: auto (shared-prompt decoder where the model allows) or generate",
    )
    # An OpenAI-compatible server (OpenAIBackend).
    base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint, e.g. http://host:8000/v1"
    )
    api_model: str | None = Field(None, description="model name sent to the endpoint")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable with the key")
    concurrency: int = Field(8, ge=1, description="API requests in flight at once")
    max_retries: int = Field(8, ge=0, description="retries per request (429, 5xx, timeouts, ...)")
    timeout: float = Field(120.0, gt=0, description="seconds to wait for one answer")
    backoff_base: float = Field(0.5, gt=0, description="first backoff ceiling in seconds")
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    explicit_sampling: bool | None = Field(
        None,
        description="send top_k and repetition_penalty with every request, neutral values "
        "too, so a vLLM server's generation_config defaults do not apply (servers with vLLM's "
        "sampling fields); default: yes for a launched server, no for base_url (then only "
        "values other than neutral are sent)",
    )
    # A server rmkit starts for `model` (and stops when the backend is closed).
    launch: LaunchConfig | None = Field(None, description="start a server for `model`")

    @model_validator(mode="after")
    def _one_backend(self) -> BackendConfig:
        if self.model and self.base_url:
            raise field_rule(
                "give either {model} (local) or {base_url} (API), not both", "model", "base_url"
            )
        if self.launch is not None and self.base_url:
            raise field_rule(
                "give either {base_url} (a running server) or {launch} (one rmkit starts), "
                "not both",
                "base_url",
                "launch",
            )
        if self.launch is not None and not self.model and type(self).api_model_required:
            raise field_rule("{launch} needs {model} (what the server serves)", "launch", "model")
        if self.backend_required and not self.model and not self.base_url:
            raise field_rule(
                "give {model} (a local model) or {base_url} + {api_model} (an API)",
                "model",
                "base_url",
                "api_model",
            )
        if self.base_url and not self.api_model and type(self).api_model_required:
            raise field_rule(
                "{base_url} needs {api_model} (the model name the server serves)",
                "base_url",
                "api_model",
            )
        if self.adapter and not self.model:
            raise field_rule(
                "{adapter} needs {model} (the base model it applies to)", "adapter", "model"
            )
        return self

    @property
    def is_api(self) -> bool:
        """True for an OpenAI-compatible server (running, or launched), False for a local model
        (or none yet)."""
        return bool(self.base_url) or self.launch is not None

    @property
    def configured(self) -> bool:
        """Whether the section names a model or a server (an optional section may not yet)."""
        return bool(self.model or self.base_url or self.launch)

    @property
    def name(self) -> str:
        """How the backend is named in records and reports: the API's model name, or the local
        model (``+adapter``). Never holds a key or a URL."""
        if self.base_url:
            return str(self.api_model)
        if self.model:
            return self.model + (f"+{self.adapter}" if self.adapter else "")
        return "<none>"

    def backend_kwargs(self) -> dict[str, Any]:
        """The :func:`~rmkit.generation.make_backend` arguments of this section's kind."""
        keys = API_KEYS if self.is_api else LOCAL_KEYS
        out = {k: getattr(self, k) for k in keys}
        if self.is_api:
            out["explicit_sampling"] = self.sends_explicit_sampling
        return out

    @property
    def sends_explicit_sampling(self) -> bool:
        """Whether requests carry ``top_k`` / ``repetition_penalty`` even at their neutral
        values: ``explicit_sampling``, by default only for a server rmkit launches (whose kind,
        vLLM or rmkit serve, is known to take them)."""
        if self.explicit_sampling is not None:
            return self.explicit_sampling
        return self.launch is not None

    def build(self, server_log: str | Path | None = None, **extra: Any) -> Backend:
        """The backend: ``make_backend`` with the fields of this kind plus ``extra`` (e.g.
        ``cache_dir=``, ``on_error=``). Options only the other kind takes are dropped (a local
        model has no cache and no per-request failures); unknown ones raise.

        With ``launch``, the server is started first (its output goes to ``server_log``, by
        default a file under the system's temporary folder) and stopped by ``close()``.
        """
        drop = _ONLY_LOCAL if self.is_api else _ONLY_API
        kw = {k: v for k, v in extra.items() if k not in drop}
        if self.launch is not None:
            from rmkit.generation.launch import launch_backend

            return launch_backend(self, server_log, **kw)
        return make_backend(**self.backend_kwargs(), **kw)

    @classmethod
    def resolve_paths(cls, data: dict[str, Any], base: Path) -> dict[str, Any]:
        """A section's local paths made relative to the recipe folder ``base``: the adapter
        always (unless absolute), the model when it exists there or is written as a relative
        path (``./``, ``../``); built-in names and hub ids stay as they are."""
        out = dict(data)
        adapter = out.get("adapter")
        if isinstance(adapter, str) and not Path(adapter).expanduser().is_absolute():
            out["adapter"] = str((base / adapter).resolve())
        model = out.get("model")
        local = isinstance(model, str) and not Path(model).expanduser().is_absolute()
        if local and (model.startswith(("./", "../")) or (base / model).is_dir()):
            out["model"] = str((base / model).resolve())
        return out
