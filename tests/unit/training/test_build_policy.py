"""Which parameters a training stage trains, for each way it can start."""

from types import SimpleNamespace

from rmkit.training.config import ModelSection, WeightsSection
from rmkit.training.model import build_policy


def _cfg(spec, mode, init_from=None, **weights):
    return SimpleNamespace(
        model=ModelSection(spec=str(spec), init_from=str(init_from) if init_from else None),
        weights=WeightsSection(mode=mode, **weights),
    )


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_full_weights_from_a_lora_adapter_train_every_parameter(tmp_path, tiny_vlm):
    lora = build_policy(_cfg(tiny_vlm, "lora"))
    lora.model.save_pretrained(tmp_path / "sft")  # an SFT stage's LoRA output
    full = build_policy(
        _cfg(tiny_vlm, "full", tmp_path / "sft", freeze_vision_tower=False, freeze_projector=False)
    )
    names = {n for n, _ in full.model.named_parameters()}
    assert not any("lora_" in n for n in names)  # merged
    assert _trainable(full.model) == names  # the language model too, not only the vision tower
    frozen = build_policy(_cfg(tiny_vlm, "full", tmp_path / "sft"))
    trainable = _trainable(frozen.model)
    assert trainable and not any("visual" in n for n in trainable)
    assert any("visual" in n for n in names)
