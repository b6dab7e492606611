"""Tiny randomly initialised models for tests and CPU smoke runs, built from config offline.

Each builder writes a complete ``save_pretrained`` folder (weights, config, generation config,
tokenizer or processor with a ChatML chat template). Weights come from a fixed seed inside a
forked RNG, so builds are byte-for-byte reproducible and leave the caller's RNG untouched.

- ``tiny-llama``: ``LlamaForCausalLM``, hidden 64, 2 layers, 4 heads (2 KV heads).
- ``tiny-qwen2.5-vl``: ``Qwen2_5_VLForConditionalGeneration`` (text hidden 64 / 2 layers /
  4 heads / 2 KV heads / mrope sections [2, 3, 3]; vision depth 1 / hidden 32 / 2 heads / patch
  14 / merge 2 / window 56), images resized to 4..64 merged 28x28 patches (tokens).
- ``tiny-qwen3-vl``: ``Qwen3VLForConditionalGeneration`` (text hidden 64 / 2 layers / 4 heads /
  2 KV heads / head dim 16 / interleaved mrope sections [4, 2, 2]; vision depth 1 / hidden 32 /
  2 heads / patch 16 / merge 2 / 8x8 learned position grid / one deepstack merger fed by block
  0), images resized to 4..64 merged 32x32 patches (tokens).
- ``tiny-idefics3``: ``Idefics3ForConditionalGeneration`` (SigLIP-style vision tower of 1 layer,
  hidden 32, 56x56 images in 14-pixel patches; pixel-shuffle connector with scale 2, so 4 image
  tokens per image; Llama text model as in ``tiny-llama``).
- ``tiny-llava``: ``LlavaForConditionalGeneration`` (CLIP vision tower of 1 layer, hidden 32,
  28x28 images in 14-pixel patches, last-layer features without the CLS token, so 4 image
  tokens per image; two-layer GELU projector; Llama text model as in ``tiny-llama``).
"""

from __future__ import annotations

from pathlib import Path

from rmkit.models.templates import IDEFICS3_IMAGE, LLAVA_IMAGE, QWEN_VL_IMAGE, chatml_template
from rmkit.models.tiny_tokenizer import (
    IDEFICS3_SPECIALS,
    LLAVA_SPECIALS,
    QWEN_VL_SPECIALS,
    build_tiny_tokenizer,
)

SEED = 1234
TEXT_DIMS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)
QWEN_MIN_PIXELS = 4 * 28 * 28
QWEN_MAX_PIXELS = 64 * 28 * 28
QWEN3_MIN_PIXELS = 4 * 32 * 32
QWEN3_MAX_PIXELS = 64 * 32 * 32
IDEFICS3_IMAGE_SIDE = 56
LLAVA_IMAGE_SIDE = 28


def _token_ids(tok) -> dict:
    return dict(bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def _save_model(model_cls, config, tok, folder: Path) -> None:
    """Instantiate ``model_cls(config)`` under a fixed seed and save it with a generation config."""
    import torch
    from transformers import GenerationConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = model_cls(config)
    model.generation_config = GenerationConfig(**_token_ids(tok))
    model.save_pretrained(folder)


def build_tiny_llama(folder: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer(chat_template=chatml_template(image_placeholder=None))
    config = LlamaConfig(
        vocab_size=len(tok), tie_word_embeddings=True, **TEXT_DIMS, **_token_ids(tok)
    )
    _save_model(LlamaForCausalLM, config, tok, folder)
    tok.save_pretrained(folder)


def _qwen_vl_tokenizer():
    """(chat template, tiny tokenizer, config kwargs of the vision special-token ids) shared by
    the Qwen-VL family fixtures."""
    template = chatml_template(QWEN_VL_IMAGE)
    tok = build_tiny_tokenizer(QWEN_VL_SPECIALS, template)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_VL_SPECIALS}
    special_ids = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    return template, tok, special_ids


def _qwen_vision(**family: object) -> dict:
    """The tiny Qwen-VL vision tower settings plus the family's own keys."""
    return dict(
        depth=1,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=TEXT_DIMS["hidden_size"],
        spatial_merge_size=2,
        temporal_patch_size=2,
        **family,
    )


def build_tiny_qwen25_vl(folder: Path) -> None:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    template, tok, special_ids = _qwen_vl_tokenizer()
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    text = dict(vocab_size=len(tok), rope_parameters=rope, **TEXT_DIMS, **_token_ids(tok))
    vision = _qwen_vision(patch_size=14, window_size=56, fullatt_block_indexes=[0])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **special_ids)
    _save_model(Qwen2_5_VLForConditionalGeneration, config, tok, folder)
    image_processor = Qwen2VLImageProcessor(min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=template,
    )
    processor.save_pretrained(folder)


def build_tiny_qwen3_vl(folder: Path) -> None:
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    template, tok, special_ids = _qwen_vl_tokenizer()
    head_dim = TEXT_DIMS["hidden_size"] // TEXT_DIMS["num_attention_heads"]
    # Interleaved over the head_dim / 2 = 8 frequencies: 4 temporal, 2 height, 2 width.
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}
    text = dict(
        vocab_size=len(tok),
        head_dim=head_dim,
        rope_parameters=rope,
        **TEXT_DIMS,
        **_token_ids(tok),
    )
    vision = _qwen_vision(patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0])
    config = Qwen3VLConfig(text_config=text, vision_config=vision, **special_ids)
    _save_model(Qwen3VLForConditionalGeneration, config, tok, folder)
    half = [0.5, 0.5, 0.5]
    image_processor = Qwen2VLImageProcessor(
        min_pixels=QWEN3_MIN_PIXELS,
        max_pixels=QWEN3_MAX_PIXELS,
        patch_size=16,
        image_mean=half,
        image_std=half,
    )
    processor = Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=Qwen3VLVideoProcessor(),
        chat_template=template,
    )
    processor.save_pretrained(folder)


def build_tiny_idefics3(folder: Path) -> None:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        LlamaConfig,
    )

    template = chatml_template(IDEFICS3_IMAGE)
    tok = build_tiny_tokenizer(IDEFICS3_SPECIALS, template)
    text = LlamaConfig(vocab_size=len(tok), **TEXT_DIMS, **_token_ids(tok))
    patch, scale = 14, 2
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IDEFICS3_IMAGE_SIDE,
        patch_size=patch,
    )
    config = Idefics3Config(
        text_config=text.to_dict(),
        vision_config=vision,
        image_token_id=tok.convert_tokens_to_ids(IDEFICS3_IMAGE),
        scale_factor=scale,
    )
    _save_model(Idefics3ForConditionalGeneration, config, tok, folder)
    side = {"longest_edge": IDEFICS3_IMAGE_SIDE}
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False, size=side, max_image_size=side
    )
    image_seq_len = (IDEFICS3_IMAGE_SIDE // patch) ** 2 // scale**2
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=image_seq_len,
        chat_template=template,
    )
    processor.save_pretrained(folder)


def build_tiny_llava(folder: Path) -> None:
    from transformers import (
        CLIPImageProcessor,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    template = chatml_template(LLAVA_IMAGE)
    tok = build_tiny_tokenizer(LLAVA_SPECIALS, template)
    text = LlamaConfig(vocab_size=len(tok), **TEXT_DIMS, **_token_ids(tok))
    patch = 14
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=LLAVA_IMAGE_SIDE,
        patch_size=patch,
        projection_dim=32,
    )
    config = LlavaConfig(
        text_config=text.to_dict(),
        vision_config=vision,
        image_token_index=tok.convert_tokens_to_ids(LLAVA_IMAGE),
        image_seq_length=(LLAVA_IMAGE_SIDE // patch) ** 2,
        vision_feature_select_strategy="default",  # drop the CLS position
        vision_feature_layer=-1,  # the only layer, so every vision weight shapes the features
    )
    _save_model(LlavaForConditionalGeneration, config, tok, folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": LLAVA_IMAGE_SIDE},
        crop_size={"height": LLAVA_IMAGE_SIDE, "width": LLAVA_IMAGE_SIDE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS position the tower adds
        chat_template=template,
    )
    processor.save_pretrained(folder)
