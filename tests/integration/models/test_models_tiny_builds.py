"""The built-in tiny models: reproducible builds, and forward / generate / save / reload."""

import hashlib

import pytest
import torch

from rmkit.models.cache import BUILD_INFO
from rmkit.models.loading import load_model
from rmkit.models.registry import resolve_model
from rmkit.utils.io import read_json

# Parameter counts fixed by the recipes in rmkit.models.tiny (vocabulary: 1024 BPE entries plus
# 0 / 4 / 4 / 40 / 1 extra special tokens).
PARAMS = {
    "tiny-llama": 139_584,
    "tiny-qwen2.5-vl": 278_912,
    "tiny-qwen3-vl": 315_328,
    "tiny-idefics3": 246_400,
    "tiny-llava": 239_200,
}
VLMS = [name for name in PARAMS if name != "tiny-llama"]


def _digest(folder):
    return {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in ("model.safetensors", "tokenizer.json", "config.json")
    }


@pytest.mark.parametrize("name", list(PARAMS))
def test_build_is_byte_identical(name, tmp_path, monkeypatch, rmkit_home):
    cached = resolve_model(name)
    monkeypatch.setenv("RMKIT_HOME", str(tmp_path))
    fresh = resolve_model(name)
    assert fresh.parent == tmp_path / "models" and fresh.name == cached.name
    assert _digest(fresh) == _digest(cached)
    assert read_json(fresh / BUILD_INFO)["builtin"] == name


def test_build_leaves_global_rng_untouched(tmp_path, monkeypatch):
    monkeypatch.setenv("RMKIT_HOME", str(tmp_path))
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    resolve_model("tiny-llama")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", list(PARAMS))
def test_load_param_count_and_family(name, rmkit_home):
    loaded = load_model(name)
    assert sum(p.numel() for p in loaded.model.parameters()) == PARAMS[name]
    assert loaded.is_vision == (name != "tiny-llama")
    if loaded.is_vision:
        assert loaded.processor.tokenizer is loaded.tokenizer
    else:
        assert loaded.processor is loaded.tokenizer
    assert loaded.tokenizer.pad_token_id == 0 and loaded.tokenizer.eos_token_id == 2
    assert loaded.tokenizer.padding_side == "right"
    assert loaded.path == resolve_model(name) and loaded.spec == name


def test_text_generate_and_save_reload(tiny_text_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = load_model(tiny_text_model)
    ids = loaded.tokenizer("Which response is better?", return_tensors="pt")
    out = loaded.model.generate(**ids, max_new_tokens=6, do_sample=False)
    n_new = out.shape[1] - ids["input_ids"].shape[1]
    assert 1 <= n_new <= 6 and (n_new == 6 or out[0, -1] == loaded.tokenizer.eos_token_id)
    loaded.model.save_pretrained(tmp_path)
    loaded.tokenizer.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(again(**ids).logits, loaded.model(**ids).logits)
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template == loaded.tokenizer.chat_template


@pytest.mark.parametrize("name", VLMS)
def test_vlm_forward_generate_save_reload(name, image_files, tmp_path, rmkit_home):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rmkit.models.chat import prepare_inputs

    loaded = load_model(name)
    conv = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": str(image_files[0])},
                {"type": "text", "text": "What?"},
            ],
        }
    ]
    batch = prepare_inputs(loaded, [conv])
    with torch.no_grad():
        logits = loaded.model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(loaded.tokenizer))
    out = loaded.model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > batch["input_ids"].shape[1]
    loaded.model.save_pretrained(tmp_path)
    loaded.processor.save_pretrained(tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(processor) is type(loaded.processor)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, logits)


def _image_prompt(image) -> list[dict]:
    content = [{"type": "image", "image": str(image)}, {"type": "text", "text": "What?"}]
    return [{"role": "user", "content": content}]


def test_qwen3_vl_deepstack_and_patch_grid(image_files, rmkit_home):
    from rmkit.models.chat import prepare_inputs

    loaded = load_model("tiny-qwen3-vl")
    visual = loaded.model.model.visual
    assert visual.deepstack_visual_indexes == [0] and len(visual.deepstack_merger_list) == 1
    # red 64x48 -> 64x64 (the 4-token floor): a 4x4 grid of 16-pixel patches, merged 2x2.
    batch = prepare_inputs(loaded, [_image_prompt(image_files[0])])
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]]
    image_id = loaded.model.config.image_token_id
    assert int((batch["input_ids"] == image_id).sum()) == 4
    assert batch["pixel_values"].shape == (16, 3 * 2 * 16 * 16)
    with torch.no_grad():
        logits = loaded.model(**batch).logits
        # The deepstack merger feeds block 0's features into the first decoder layer, so
        # silencing it must change the output.
        for param in visual.deepstack_merger_list.parameters():
            param.zero_()
        silenced = loaded.model(**batch).logits
    assert not torch.allclose(silenced, logits, atol=1e-4)
