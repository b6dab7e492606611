"""LoRA and QLoRA on the tiny models: which modules are wrapped and which parameters learn."""

import pytest
import torch

from rmkit.models.chat import collate, encode_sft
from rmkit.models.loading import load_model
from rmkit.models.lora import (
    LoraSettings,
    apply_lora,
    set_vision_trainable,
    trainable_parameter_summary,
    vision_part,
)


def _batch(loaded, image=None):
    content = "Which answer is better?"
    if image is not None:
        content = [{"type": "image", "image": str(image)}, {"type": "text", "text": content}]
    msgs = [{"role": "user", "content": content}, {"role": "assistant", "content": "Answer 2."}]
    return collate(loaded, [encode_sft(loaded, msgs)])


def _grads(model):
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def _lora_modules(model):
    return {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n}


def test_text_lora_grads_only_on_adapters(tiny_text_model):
    loaded = load_model("tiny-llama")
    model = apply_lora(loaded.model, LoraSettings(r=4, alpha=8))
    # 2 layers x (q, k, v, o, gate, up, down); the tied output head is not wrapped
    assert len(_lora_modules(model)) == 14
    model(**_batch(loaded)).loss.backward()
    grads = _grads(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert grads and grads <= trainable
    assert all(".lora_" in n for n in trainable)
    assert any(".lora_B." in n for n in grads)  # B starts at zero but receives gradient


@pytest.mark.parametrize(
    "name", ["tiny-qwen2.5-vl", "tiny-idefics3", "tiny-llava", "tiny-qwen3-vl"]
)
def test_vlm_lora_leaves_vision_out_by_default(name, image_files):
    loaded = load_model(name)
    model = apply_lora(loaded.model, LoraSettings(r=4, alpha=8))
    modules = _lora_modules(model)
    assert len(modules) == 14 and all(vision_part(m) is None for m in modules)
    model(**_batch(loaded, image_files[0])).loss.backward()
    grads = _grads(model)
    assert grads and all(".lora_" in n and vision_part(n) is None for n in grads)
    by_part = trainable_parameter_summary(model)["by_part"]
    assert by_part["tower"]["trainable"] == 0 and by_part["projector"]["trainable"] == 0
    assert by_part["tower"]["total"] > 0 and by_part["projector"]["total"] > 0


@pytest.mark.parametrize(
    "name", ["tiny-qwen2.5-vl", "tiny-idefics3", "tiny-llava", "tiny-qwen3-vl"]
)
def test_vlm_lora_includes_vision_when_asked(name, image_files):
    loaded = load_model(name)
    model = apply_lora(loaded.model, LoraSettings(r=4, alpha=8, include_vision=True))
    parts = {vision_part(m) for m in _lora_modules(model)}
    assert parts == {None, "tower", "projector"}
    # B matrices start at zero, so vision LoRA A gets no gradient on the first step; give B a
    # value to check that gradients reach every wrapped vision module.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.fill_(0.01)
    model(**_batch(loaded, image_files[0])).loss.backward()
    grads = _grads(model)
    assert all(".lora_" in n for n in grads)
    assert {vision_part(n) for n in grads} == {None, "tower", "projector"}


def test_unfrozen_tower_gets_full_gradients(image_files):
    loaded = load_model("tiny-qwen2.5-vl")
    model = apply_lora(loaded.model, LoraSettings(r=4, alpha=8))
    counts = set_vision_trainable(model, tower=True, projector=False)
    assert counts["tower"] == trainable_parameter_summary(model)["by_part"]["tower"]["trainable"]
    model(**_batch(loaded, image_files[1])).loss.backward()
    grads = _grads(model)
    assert any(vision_part(n) == "tower" and ".lora_" not in n for n in grads)
    assert not any(vision_part(n) == "projector" for n in grads)


def test_qlora_nf4_on_cpu_backward(tiny_text_model):
    import bitsandbytes as bnb

    loaded = load_model("tiny-llama", quantization="nf4")
    assert loaded.quantization == "nf4"
    layer = loaded.model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj, bnb.nn.Linear4bit)
    assert layer.self_attn.q_proj.weight.dtype == torch.uint8  # packed 4-bit storage
    model = apply_lora(loaded.model, LoraSettings(r=4, alpha=8, dropout=0.0))
    loss = model(**_batch(loaded)).loss
    assert torch.isfinite(loss)
    loss.backward()
    grads = _grads(model)
    assert grads and all(".lora_" in n for n in grads)
    summary = trainable_parameter_summary(model)
    # r * (in + out) per wrapped layer: q/o 64->64, k/v 64->32 (2 KV heads of 16),
    # gate/up 64->128, down 128->64; two decoder layers.
    per_layer = 4 * (128 + 96 + 96 + 128 + 192 + 192 + 192)
    assert summary["trainable"] == 2 * per_layer == 8192
