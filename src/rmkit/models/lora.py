"""LoRA / QLoRA adapters and which parts of a vision-language model train.

A vision-language model has three parts, recognised by module-name patterns per family:

=====================  =====================  ====================================
family                 vision tower           projector (vision -> language)
=====================  =====================  ====================================
Qwen2-VL / Qwen2.5-VL  ``visual``             ``visual.merger``
Qwen3-VL               ``visual``             ``visual.merger``, ``visual.deepstack_merger_list``
Idefics3 / SmolVLM     ``vision_model``       ``connector``
LLaVA / InternVL (HF)  ``vision_tower``       ``multi_modal_projector``
=====================  =====================  ====================================

Everything else is the language model. LoRA targets the language model's linear layers by
default (``include_vision=True`` adds the tower's and projector's); the output head is never a
target. :func:`set_vision_trainable` freezes or unfreezes the tower and projector weights.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field

from rmkit.config.validate import StrictModel
from rmkit.errors import RmkitError

log = logging.getLogger(__name__)

VISION_FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "qwen2-vl": (("visual",), ("visual.merger",)),
    "qwen3-vl": (("visual",), ("visual.merger", "visual.deepstack_merger_list")),
    "idefics3": (("vision_model",), ("connector",)),
    "llava": (("vision_tower",), ("multi_modal_projector",)),
}
TOWER_PATTERNS = tuple(dict.fromkeys(p for t, _ in VISION_FAMILIES.values() for p in t))
PROJECTOR_PATTERNS = tuple(dict.fromkeys(p for _, j in VISION_FAMILIES.values() for p in j))


class LoraSettings(StrictModel):
    """LoRA hyper-parameters. ``target_modules``: ``"all-linear"`` or module-name suffixes."""

    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    include_vision: bool = False


def vision_part(name: str) -> str | None:
    """``"projector"``, ``"tower"`` or ``None`` (language model) for a module/parameter name."""
    padded = f".{name}."
    if any(f".{p}." in padded for p in PROJECTOR_PATTERNS):
        return "projector"
    if any(f".{p}." in padded for p in TOWER_PATTERNS):
        return "tower"
    return None


def lora_target_names(model, settings: LoraSettings) -> list[str]:
    """Full names of the linear modules LoRA wraps (output head and, by default, vision excluded)."""
    import torch.nn as nn

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    wanted = None if settings.target_modules == "all-linear" else set(settings.target_modules)
    names, seen_suffixes = [], set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or module is head:
            continue
        if not settings.include_vision and vision_part(name) is not None:
            continue
        suffix = name.rsplit(".", 1)[-1]
        seen_suffixes.add(suffix)
        if wanted is None or suffix in wanted or name in wanted:
            names.append(name)
    if not names:
        raise RmkitError(
            f"lora.target_modules {settings.target_modules!r}: matches no linear layer",
            hint="linear layers here: " + ", ".join(sorted(seen_suffixes)),
        )
    return names


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence the FutureWarning peft triggers by reading a renamed transformers attribute."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        yield


def apply_lora(model, settings: LoraSettings):
    """Wrap ``model`` in a trainable ``PeftModel`` (4-bit models are prepared for training first)."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if isinstance(model, PeftModel):
        raise RmkitError(
            "the model already carries a LoRA adapter",
            hint="load it with adapter_trainable=True to keep training it, or load the base model",
        )
    targets = lora_target_names(model, settings)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with quiet_peft():
        if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_quantized", False):
            # Casts norms and other small float parameters to float32 and makes the input
            # embeddings' output require grad; gradient checkpointing is the trainer's choice.
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        peft_model = get_peft_model(model, config)
    summary = trainable_parameter_summary(peft_model)
    log.info(
        "LoRA r=%d on %d modules: %d trainable of %d parameters (%.2f%%)",
        settings.r,
        len(targets),
        summary["trainable"],
        summary["total"],
        100 * summary["trainable_fraction"],
    )
    return peft_model


def set_vision_trainable(model, tower: bool, projector: bool) -> dict[str, int]:
    """Set ``requires_grad`` of every vision-tower / projector parameter; return their counts.

    Raises if asked to train a part the model does not have (e.g. a text-only model).
    """
    counts = {"tower": 0, "projector": 0}
    flags = {"tower": tower, "projector": projector}
    for name, param in model.named_parameters():
        part = vision_part(name)
        if part is not None:
            param.requires_grad_(flags[part])
            counts[part] += param.numel()
    for part, flag in flags.items():
        if flag and counts[part] == 0:
            raise RmkitError(
                f"cannot train the vision {part}: the model has none",
                hint="known vision parts: " + ", ".join(TOWER_PATTERNS + PROJECTOR_PATTERNS),
            )
    log.info("vision tower %s, projector %s", _word(tower), _word(projector))
    return counts


def _word(flag: bool) -> str:
    return "trainable" if flag else "frozen"


def logical_numel(param: Any) -> int:
    """Logical parameter count (4-bit packed weights report their unpacked size)."""
    state = getattr(param, "quant_state", None)
    return int(state.shape.numel()) if state is not None else param.numel()


def trainable_parameter_summary(model) -> dict[str, Any]:
    """Counts of all and trainable parameters, overall and per part (language/tower/projector)."""
    parts = {p: {"total": 0, "trainable": 0} for p in ("language", "tower", "projector")}
    for name, param in model.named_parameters():
        bucket = parts[vision_part(name) or "language"]
        n = logical_numel(param)
        bucket["total"] += n
        if param.requires_grad:
            bucket["trainable"] += n
    total = sum(b["total"] for b in parts.values())
    trainable = sum(b["trainable"] for b in parts.values())
    return {
        "total": total,
        "trainable": trainable,
        "trainable_fraction": trainable / total if total else 0.0,
        "by_part": parts,
    }


@contextlib.contextmanager
def merged_lora(model, enabled: bool = True, dtype=None):
    """Run with the active LoRA adapters folded into their base weights, then restore them.

    Generation then runs plain linear layers instead of base + two low-rank matmuls per layer
    (a third faster per decode step for SmolLM2 on the CPU). Each adapted base weight gets a
    new tensor ``W + scale * B @ A`` while inside; the original tensor object is put back after,
    so the weights come out bit-for-bit unchanged (no merge/unmerge rounding drift). Costs one
    extra copy of the adapted weights while inside. Quantized (QLoRA) layers are left as they
    are.

    ``dtype`` (e.g. ``torch.bfloat16``): also give every floating-point parameter a copy in that
    dtype while inside, so generation runs as a plain low-precision model. On CPUs this is
    about twice as fast per decode step as bf16 autocast, which re-casts every fp32 weight at
    every step. The yielded count is the number of LoRA layers folded.
    """
    import torch

    swapped: dict[int, tuple] = {}  # id(param) -> (param, original data)
    folded = []
    with torch.no_grad():
        if enabled:
            from peft.tuners.lora import LoraLayer

            for module in model.modules():
                if not isinstance(module, LoraLayer) or module.merged or module.disable_adapters:
                    continue
                base = module.get_base_layer()
                weight = getattr(base, "weight", None)
                active = [a for a in module.active_adapters if a in module.lora_A]
                if (
                    weight is None
                    or not weight.is_floating_point()
                    or module.lora_variant
                    or not active
                ):
                    continue
                delta = sum(module.get_delta_weight(a) for a in active)
                swapped[id(weight)] = (weight, weight.data)
                weight.data = (weight.data + delta.to(weight.dtype)).to(dtype or weight.dtype)
                module.merged_adapters = list(active)
                folded.append(module)
        if dtype is not None:
            # the adapters of folded layers are not used while inside: leave them as they are
            unused = {
                id(p) for m in folded for p in (*m.lora_A.parameters(), *m.lora_B.parameters())
            }
            for param in model.parameters():
                if (
                    id(param) in swapped
                    or id(param) in unused
                    or not param.is_floating_point()
                    or param.dtype == dtype
                ):
                    continue
                swapped[id(param)] = (param, param.data)
                param.data = param.data.to(dtype)
    try:
        yield len(folded)
    finally:
        for param, original in swapped.values():
            param.data = original
        for module in folded:
            module.merged_adapters = []
