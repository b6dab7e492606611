"""Runtime LoRA adapters for ``rmkit serve`` (vLLM's ``/v1/load_lora_adapter`` semantics).

Adapters are PEFT LoRA folders (``adapter_config.json`` + ``adapter_model.safetensors``, as
``PeftModel.save_pretrained`` and ``rmkit train`` write them). The first one wraps the served
model with ``PeftModel.from_pretrained``; later ones are added with ``load_adapter``. A request
that names an adapter runs with ``set_adapter(...)``: the same LoRA modules, unmerged, that the
trainer's ``PeftModel`` runs, so the logits are the trainer's. The base model runs inside
``disable_adapter()`` (or with the ``--adapter`` given at start-up, PEFT's "default"). Each
adapter lives in PEFT under an internal name (``rmkit_<k>``), so any client name works and an
in-place reload can load the new weights beside the old ones before it drops them.

Before anything touches the model, the folder is checked: inside ``--lora-root`` when one is set
(after resolving ``..`` and symlinks), a LoRA config, safetensors weights (pickled ``.bin``
files are refused), and every weight's module present in the model with matching shapes. All
methods run on the model-worker thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rmkit.serve.protocol import ApiError

log = logging.getLogger(__name__)

WEIGHTS = "adapter_model.safetensors"


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param)


class AdapterManager:
    """The runtime adapters of one served model (see the module docstring)."""

    def __init__(
        self,
        loaded: Any,
        backend: Any,
        *,
        reserved: set[str],
        root: str | Path | None = None,
        max_loras: int = 4,
    ):
        self.loaded, self.backend, self.reserved, self.max_loras = (
            loaded,
            backend,
            reserved,
            max_loras,
        )
        self.root = Path(root).expanduser().resolve() if root is not None else None
        self.adapters: dict[str, tuple[str, str]] = {}  # client name -> (PEFT name, path given)
        self.startup = "default" if _peft_config(loaded.model) else None
        self._counter = 0

    def names(self) -> list[str]:
        return list(self.adapters)

    # ------------------------------------------------------------------ choosing the weights

    @contextlib.contextmanager
    def active(self, name: str | None) -> Iterator[None]:
        """Run the block with adapter ``name`` active (None: the served base model)."""
        model = self.loaded.model
        if name is not None:
            if name not in self.adapters:
                raise ApiError(
                    404, f"the adapter '{name}' is not loaded", "model", code="model_not_found"
                )
            model.set_adapter(self.adapters[name][0], inference_mode=True)
            yield
        elif self.startup is not None:
            model.set_adapter(self.startup, inference_mode=True)
            yield
        elif _peft_config(model):
            with model.disable_adapter():
                yield
        else:
            yield

    # ------------------------------------------------------------------ loading

    def load(self, name: str, path: str, inplace: bool = False) -> str:
        if name in self.reserved:
            raise _bad(
                f"The lora adapter '{name}' conflicts with a served base model.", "lora_name"
            )
        if name in self.adapters and not inplace:
            raise _bad(
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.",
                "lora_name",
            )
        if name not in self.adapters and len(self.adapters) >= self.max_loras:
            raise _bad(
                f"{len(self.adapters)} adapters are loaded, the most this server keeps "
                f"(--max-loras {self.max_loras}); unload one first",
                "lora_name",
            )
        folder = self._folder(path)
        self._check_fits(folder, path)
        self._counter += 1
        internal = f"rmkit_{self._counter}"
        self._add(internal, folder, path)
        old = self.adapters.get(name)
        self.adapters[name] = (internal, path)
        if old is not None:
            _delete(self.loaded.model, old[0])
        self.loaded.model.eval()
        log.info("loaded LoRA adapter '%s'%s", name, " in place" if old else "")
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, name: str) -> str:
        if name not in self.adapters:
            raise ApiError(
                404, f"The lora adapter '{name}' cannot be found.", "lora_name", code="not_found"
            )
        internal, _ = self.adapters.pop(name)
        model = self.loaded.model
        _delete(model, internal)
        if not self.adapters and self.startup is None:  # back to the plain model
            self._set_model(model.unload())
        log.info("removed LoRA adapter '%s'", name)
        return f"Success: LoRA adapter '{name}' removed successfully."

    def _add(self, internal: str, folder: Path, given: str) -> None:
        from peft import PeftModel

        from rmkit.models.lora import quiet_peft

        model = self.loaded.model
        device = str(self.loaded.device)
        try:
            with quiet_peft():
                if _peft_config(model):
                    result = model.load_adapter(
                        str(folder), adapter_name=internal, is_trainable=False, torch_device=device
                    )
                else:
                    model = PeftModel.from_pretrained(
                        model,
                        str(folder),
                        adapter_name=internal,
                        is_trainable=False,
                        torch_device=device,
                    )
                    self._set_model(model)
                    result = None
        except (ValueError, RuntimeError, KeyError, OSError) as e:
            log.warning("LoRA adapter %s failed to load: %s: %s", given, type(e).__name__, e)
            self._drop(internal)
            raise _bad(
                f"lora_path '{given}': the adapter does not fit the served model", "lora_path"
            ) from None
        missing = list(getattr(result, "missing_keys", None) or [])
        if missing:
            self._drop(internal)
            raise _bad(
                f"lora_path '{given}': the adapter lacks {len(missing)} weight(s) its config "
                "names (first: " + missing[0] + ")",
                "lora_path",
            )

    def _drop(self, internal: str) -> None:
        model = self.loaded.model
        if internal in _peft_config(model):
            with contextlib.suppress(Exception):
                _delete(model, internal)
        if _peft_config(model) == {} and self.startup is None:
            with contextlib.suppress(Exception):
                self._set_model(model.unload())

    def _set_model(self, model: Any) -> None:
        self.loaded.model = model
        self.backend.model = model
        model.eval()

    # ------------------------------------------------------------------ checks

    def _folder(self, given: str) -> Path:
        path = Path(given).expanduser()
        if self.root is not None:
            path = (self.root / path).resolve() if not path.is_absolute() else path.resolve()
            if not path.is_relative_to(self.root):
                raise _bad(f"lora_path '{given}' is outside the server's --lora-root", "lora_path")
        else:
            path = path.resolve()
        if not path.is_dir():
            raise _bad(f"lora_path '{given}': no such folder", "lora_path")
        config = path / "adapter_config.json"
        if not config.is_file():
            raise _bad(
                f"lora_path '{given}' is not a PEFT adapter folder (no adapter_config.json)",
                "lora_path",
            )
        try:
            peft_type = json.loads(config.read_text()).get("peft_type")
        except (OSError, ValueError, AttributeError):
            raise _bad(f"lora_path '{given}': adapter_config.json is not valid JSON") from None
        if peft_type != "LORA":
            raise _bad(f"lora_path '{given}': a {peft_type} adapter; only LoRA is served")
        if not (path / WEIGHTS).is_file():
            raise _bad(
                f"lora_path '{given}': no {WEIGHTS} (pickled .bin adapters are not loaded)",
                "lora_path",
            )
        return path

    def _check_fits(self, folder: Path, given: str) -> None:
        """Every LoRA weight's module exists in the model, with matching in/out features."""
        from safetensors import SafetensorError, safe_open

        from rmkit.generation.prefix_decode import causal_lm

        modules = dict(causal_lm(self.loaded.model).named_modules())
        try:
            with safe_open(str(folder / WEIGHTS), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as e:
            raise _bad(f"lora_path '{given}': unreadable weights ({e})", "lora_path") from None
        if not shapes:
            raise _bad(f"lora_path '{given}': the adapter has no weights", "lora_path")
        for key, shape in shapes.items():
            for part, dim in ((".lora_A.", 1), (".lora_B.", 0)):
                if part not in key:
                    continue
                name = key.split(part, 1)[0].removeprefix("base_model.model.")
                module = modules.get(name)
                base = getattr(module, "base_layer", module)
                want = getattr(base, "in_features" if dim == 1 else "out_features", None)
                if module is None:
                    raise _bad(
                        f"lora_path '{given}': the adapter targets '{name}', which the served "
                        "model does not have",
                        "lora_path",
                    )
                if want is not None and len(shape) == 2 and shape[dim] != want:
                    raise _bad(
                        f"lora_path '{given}': weight '{key}' has shape {list(shape)}, but "
                        f"'{name}' has {want} {'input' if dim == 1 else 'output'} features",
                        "lora_path",
                    )


def _peft_config(model: Any) -> dict:
    config = getattr(model, "peft_config", None)
    return config if isinstance(config, dict) else {}


def _delete(model: Any, internal: str) -> None:
    """Drop a PEFT adapter (quietly: PEFT warns when the active one goes; each request sets its
    own adapter anyway)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.delete_adapter(internal)
