"""The policy to train (LoRA, QLoRA or full weights) and its frozen reference for KL.

``init_from`` starts a stage from a previous stage's output:

- a PEFT adapter folder: with LoRA/QLoRA the same adapter keeps training; with full weights it
  is merged into the base first;
- a full model folder: it becomes the base (LoRA adapters go on top, or it trains in full).

The reference policy is the model as the stage starts. For LoRA without ``init_from`` it is the
same model with adapters disabled (no second copy). For LoRA continuing an adapter, a frozen
copy of that adapter is loaded next to it (adapter weights only) and switched in for reference
passes. For full weights a frozen copy of the model is kept, only when KL is on.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path
from typing import Any

from rmkit.errors import RmkitError

log = logging.getLogger(__name__)

REFERENCE_ADAPTER = "reference"


def _is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def build_policy(cfg) -> Any:
    """Load the model of ``cfg`` and make the right parameters trainable; returns LoadedModel."""
    from rmkit.models.loading import load_model
    from rmkit.models.lora import apply_lora, set_vision_trainable, trainable_parameter_summary

    w, m = cfg.weights, cfg.model
    kw = dict(
        dtype=m.dtype,
        trust_remote_code=m.trust_remote_code,
        min_pixels=m.min_pixels,
        max_pixels=m.max_pixels,
    )
    quant = "nf4" if w.mode == "qlora" else None
    init = Path(m.init_from) if m.init_from else None
    if init is not None and not init.is_dir():
        raise RmkitError(
            f"model.init_from {init}: no such folder",
            hint="point it at a previous stage's output, e.g. runs/sft/final",
        )
    if init is not None and _is_adapter(init):
        if w.mode == "full":
            loaded = load_model(m.spec, adapter=init, **kw)
            loaded.model = loaded.model.merge_and_unload()
            loaded.model.requires_grad_(True)  # PEFT froze the base weights it merged into
            loaded.adapter = None
        else:
            loaded = load_model(
                m.spec, quantization=quant, adapter=init, adapter_trainable=True, **kw
            )
    else:
        loaded = load_model(init or m.spec, quantization=quant, **kw)
        if w.mode == "full":
            loaded.model.requires_grad_(True)
        else:
            loaded.model = apply_lora(loaded.model, w.lora)
    if w.mode == "full" and loaded.is_vision:
        set_vision_trainable(loaded.model, not w.freeze_vision_tower, not w.freeze_projector)
    if w.gradient_checkpointing:
        loaded.model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    summary = trainable_parameter_summary(loaded.model)
    log.info(
        "training %s: %.2fM of %.1fM parameters trainable",
        w.mode,
        summary["trainable"] / 1e6,
        summary["total"] / 1e6,
    )
    return loaded


class Reference:
    """Reference-policy forward passes for KL (see the module docstring)."""

    def __init__(self, kind: str, copy_model: Any = None, adapter_from: Path | None = None):
        self.kind = kind
        self.copy_model = copy_model
        self.adapter_from = adapter_from

    @contextlib.contextmanager
    def active(self, policy) -> Any:
        """Yield the model to run reference passes with (no grad is the caller's job)."""
        if self.kind == "copy":
            yield self.copy_model
        elif self.kind == "disable":
            with policy.disable_adapter():
                yield policy
        else:
            flags = {n: p.requires_grad for n, p in policy.named_parameters()}
            active = policy.active_adapter
            policy.set_adapter(REFERENCE_ADAPTER)
            try:
                yield policy
            finally:
                policy.set_adapter(active)
                for n, p in policy.named_parameters():
                    p.requires_grad_(flags[n])


def build_reference(cfg, loaded, device) -> Reference | None:
    """The reference for ``cfg.rl.kl`` (None when KL is off)."""
    if cfg.stage != "rl" or cfg.rl.kl.mode == "none" or cfg.rl.kl.coef == 0:
        return None
    if cfg.weights.mode == "full":
        ref = copy.deepcopy(loaded.model).to(device).eval()
        ref.requires_grad_(False)
        log.info("KL reference: a frozen copy of the starting model")
        return Reference("copy", copy_model=ref)
    if loaded.adapter is not None:
        loaded.model.load_adapter(str(loaded.adapter), adapter_name=REFERENCE_ADAPTER)
        for name, p in loaded.model.named_parameters():
            if f".{REFERENCE_ADAPTER}." in name:
                p.requires_grad_(False)
        log.info("KL reference: the starting adapter %s, frozen", loaded.adapter)
        return Reference("adapter", adapter_from=loaded.adapter)
    log.info("KL reference: the base model (adapters disabled)")
    return Reference("disable")


def trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def disable_dropout(model) -> int:
    """Set every dropout probability to 0 (RL: the rollout, old, reference and training passes
    must score tokens with the same function). Returns how many modules changed."""
    import torch.nn as nn

    n = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout) and module.p > 0:
            module.p = 0.0
            n += 1
    if n:
        log.info("RL: dropout switched off in %d modules", n)
    return n
