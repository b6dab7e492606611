"""Load a model with its tokenizer/processor, optionally 4-bit (QLoRA) and with a PEFT adapter.

``load_model`` resolves the spec (:func:`rmkit.models.registry.resolve_model`), picks
``AutoModelForImageTextToText`` for vision-language configs and ``AutoModelForCausalLM``
otherwise, and returns a :class:`LoadedModel`. The model stays on the CPU unless it is loaded in
4 bits on a machine with CUDA (bitsandbytes places it at load time); callers move it otherwise.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmkit.errors import RmkitError
from rmkit.models.registry import resolve_model
from rmkit.utils.io import read_json

log = logging.getLogger(__name__)

DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}
QUANTIZATIONS = ("nf4",)
# Modules kept out of 4-bit quantization (regexes matched from the start of a module name).
NF4_SKIP = [
    "lm_head",
    r".*\.visual",
    r".*vision_model",
    r".*vision_tower",
    r".*multi_modal_projector",
    r".*connector",
]


@dataclass
class LoadedModel:
    """A model ready for generation or training.

    ``processor`` is the multimodal processor of a vision-language model and the tokenizer
    itself for a text model. ``path`` is the resolved base-model folder; ``adapter`` the PEFT
    adapter folder loaded on top (``model`` is then a ``PeftModel``).
    """

    model: Any
    tokenizer: Any
    processor: Any
    is_vision: bool
    path: Path
    spec: str
    dtype: str = "float32"
    quantization: str | None = None
    adapter: Path | None = None

    @property
    def device(self):
        return next(self.model.parameters()).device


def parse_dtype(dtype: Any):
    """``torch.dtype`` for a name such as ``"bf16"``/``"bfloat16"`` (or a ``torch.dtype``)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    key = DTYPES.get(str(dtype).strip().lower())
    if key is None:
        raise RmkitError(
            f"dtype '{dtype}': not supported", hint="use one of float32, bfloat16, float16"
        )
    return getattr(torch, key)


THREADS_ENV = "RMKIT_THREADS"


def configure_threads() -> int:
    """Apply the CPU threading settings for local model work; return torch's thread count.

    Decided here, where a model is loaded, not at the command entry (commands that load no
    model touch nothing). ``RMKIT_THREADS=N`` sets torch's intra-op threads to N; unset (or
    ``auto``) keeps torch's default, which follows ``OMP_NUM_THREADS`` when it is exported and
    the number of physical cores otherwise. rmkit never sets ``OMP_WAIT_POLICY``: OpenMP reads
    it from the environment when torch is imported, so export it before starting rmkit
    (``PASSIVE`` on a CPU shared with other busy processes; docs/training.md has measurements).
    """
    import torch

    value = os.environ.get(THREADS_ENV, "").strip().lower()
    if value not in ("", "auto"):
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise RmkitError(
                f"{THREADS_ENV}={os.environ[THREADS_ENV]!r}: not a positive number of threads",
                hint=f"unset {THREADS_ENV} (torch's default) or give e.g. {THREADS_ENV}=4",
            )
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    n = torch.get_num_threads()
    log.debug(
        "CPU threads: %d (%s), OMP_WAIT_POLICY=%s",
        n,
        f"{THREADS_ENV}={value}" if value not in ("", "auto") else "torch default",
        os.environ.get("OMP_WAIT_POLICY", "OpenMP default"),
    )
    return n


def load_model(
    spec: str | os.PathLike,
    *,
    dtype: Any = "float32",
    quantization: str | None = None,
    adapter: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    adapter_trainable: bool = False,
) -> LoadedModel:
    """Load ``spec`` (built-in name, folder, hub id, or a PEFT adapter folder).

    ``dtype``: weights dtype (and compute dtype under ``quantization="nf4"``). ``adapter``: a
    PEFT adapter folder put on top (trainable only with ``adapter_trainable``). A spec that is
    itself an adapter folder loads its ``base_model_name_or_path`` with the adapter on top.
    ``min_pixels``/``max_pixels``: image size bounds for Qwen-VL-family processors.
    """
    configure_threads()
    torch_dtype = parse_dtype(dtype)
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise RmkitError(
            f"quantization '{quantization}': not supported",
            hint="use 'nf4' (QLoRA) or leave it unset",
        )
    t0 = time.monotonic()
    path = resolve_model(spec)
    adapter_path = _check_adapter(adapter) if adapter is not None else None
    if _is_adapter_only(path):
        if adapter_path is not None:
            raise RmkitError(
                f"model '{spec}': is an adapter folder and adapter '{adapter}' was given too",
                hint="give the base model as the spec, or drop the adapter option",
            )
        adapter_path, path = path, _adapter_base(path)
    model, tokenizer, processor, is_vision = _load_base(
        path, torch_dtype, quantization, trust_remote_code, min_pixels, max_pixels
    )
    if adapter_path is not None:
        model = _apply_adapter(model, adapter_path, adapter_trainable)
    dtype_name = str(torch_dtype).replace("torch.", "")
    _log_loaded(spec, model, is_vision, dtype_name, quantization, time.monotonic() - t0)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        processor=processor,
        is_vision=is_vision,
        path=path,
        spec=str(spec),
        dtype=dtype_name,
        quantization=quantization,
        adapter=adapter_path,
    )


def _apply_adapter(model, adapter_path: Path, trainable: bool):
    from peft import PeftModel, prepare_model_for_kbit_training

    from rmkit.models.lora import quiet_peft

    with quiet_peft():
        if trainable and getattr(model, "is_loaded_in_4bit", False):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = PeftModel.from_pretrained(model, str(adapter_path), is_trainable=trainable)
    log.info("adapter %s loaded on top", adapter_path)
    return model


def _log_loaded(spec, model, is_vision: bool, dtype_name: str, quantization, seconds: float):
    from rmkit.models.lora import logical_numel

    n_params = sum(logical_numel(p) for p in model.parameters())
    log.info(
        "loaded %s (%s, %.1fM parameters, %s%s) in %.1f s",
        spec,
        "vision-language" if is_vision else "text",
        n_params / 1e6,
        dtype_name,
        ", nf4" if quantization else "",
        seconds,
    )


def _is_adapter_only(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()


def _check_adapter(adapter: str | os.PathLike) -> Path:
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise RmkitError(
            f"adapter '{adapter}': no adapter_config.json there",
            hint="pass a folder written by PeftModel.save_pretrained (rmkit train output)",
        )
    return path.resolve()


def _adapter_base(adapter: Path) -> Path:
    """The base model folder named by an adapter's ``base_model_name_or_path``."""
    from rmkit.models.registry import builtin_for_folder

    base = read_json(adapter / "adapter_config.json").get("base_model_name_or_path")
    if not base:
        raise RmkitError(
            f"{adapter / 'adapter_config.json'}: field 'base_model_name_or_path' is empty",
            hint="pass the base model as the spec and this folder as the adapter",
        )
    if not Path(base).expanduser().exists():
        # An adapter trained on a built-in model on another machine names that machine's cache.
        name = builtin_for_folder(Path(base).name)
        if name is not None:
            base = name
    log.info("adapter %s: base model %s", adapter, base)
    return resolve_model(base)


def model_class_for(config) -> tuple[Any, bool]:
    """(Auto model class, is_vision) for a loaded ``AutoConfig``."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    auto_map = getattr(config, "auto_map", None) or {}
    if config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES or (
        "AutoModelForImageTextToText" in auto_map
    ):
        return AutoModelForImageTextToText, True
    return AutoModelForCausalLM, getattr(config, "vision_config", None) is not None


def _load_base(path, torch_dtype, quantization, trust_remote_code, min_pixels, max_pixels):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as e:
        raise RmkitError(
            f"model '{path}': config not understood ({str(e).splitlines()[0]})",
            hint="pass --trust-remote-code for models with custom code, or upgrade transformers",
        ) from None
    cls, is_vision = model_class_for(config)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if quantization == "nf4":
        kwargs.update(_nf4_kwargs(torch_dtype))
    model = cls.from_pretrained(path, config=config, **kwargs)
    if is_vision:
        processor = _load_processor(path, trust_remote_code, min_pixels, max_pixels)
        tokenizer = processor.tokenizer
    else:
        from transformers import AutoTokenizer

        if min_pixels is not None or max_pixels is not None:
            log.warning("min_pixels/max_pixels ignored: %s is a text model", path)
        tokenizer = processor = AutoTokenizer.from_pretrained(
            path, trust_remote_code=trust_remote_code
        )
    _prepare_tokenizer(tokenizer, path, is_vision)
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, processor, is_vision


def _nf4_kwargs(torch_dtype) -> dict:
    import torch
    from transformers import BitsAndBytesConfig

    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype,
        llm_int8_skip_modules=list(NF4_SKIP),
    )
    if torch.cuda.is_available():
        device_map: Any = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    else:
        device_map = "cpu"
    return {"quantization_config": bnb, "device_map": device_map}


def _load_processor(path, trust_remote_code, min_pixels, max_pixels):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    if min_pixels is None and max_pixels is None:
        return processor
    image_processor = getattr(processor, "image_processor", None)
    valid = getattr(getattr(image_processor, "valid_kwargs", None), "__annotations__", {})
    if "min_pixels" not in valid:
        log.warning(
            "min_pixels/max_pixels ignored: %s has no pixel-count bounds",
            type(image_processor).__name__,
        )
        return processor
    size = {
        "shortest_edge": min_pixels or image_processor.size.shortest_edge,
        "longest_edge": max_pixels or image_processor.size.longest_edge,
    }
    if size["shortest_edge"] > size["longest_edge"]:
        raise RmkitError(f"min_pixels {size['shortest_edge']} > max_pixels {size['longest_edge']}")
    return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, size=size)


def _prepare_tokenizer(tokenizer, path: Path, is_vision: bool) -> None:
    """Padding token, right padding by default, and a chat template for text models lacking one."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise RmkitError(
                f"model '{path}': the tokenizer has neither a padding nor an end-of-sequence token",
                hint="set pad_token in its tokenizer_config.json",
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if not is_vision and not getattr(tokenizer, "chat_template", None):
        from rmkit.models.templates import chatml_template

        log.warning("%s has no chat template; using ChatML", path)
        tokenizer.chat_template = chatml_template(image_placeholder=None)
