"""Chat messages to model inputs: generation prompts, SFT examples with loss masks, batching.

Messages follow rmkit's convention (``docs/architecture.md``): ``{"role", "content"}`` with
content a string or a list of ``{"type": "text", "text"}`` / ``{"type": "image", "image"}``
parts; an image is a file path (or a ``PIL.Image``). Text models get plain-string content (image
parts are an error); vision-language models get part lists, rendered by the processor's chat
template and tokenised together with the loaded images, so image tokens are expanded correctly.

Control tokens (SECURITY-REVIEW M7): :func:`normalize_messages` escapes every special-token string
of the model's tokenizer in message text (``<|im_end|>`` -> ``<\\|im_end|>``, see
:mod:`rmkit.prompts.neutralize`) before the chat template is applied, so text from records,
candidates and requests can never produce a special token; only the template places them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rmkit.errors import RmkitError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels", "token_type_ids", "mm_token_type_ids")
_END_TOKENS = ("<|im_end|>", "<end_of_utterance>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


def normalize_messages(
    messages: list[dict], is_vision: bool, specials: tuple[str, ...] = ()
) -> tuple[list[dict], list[Any]]:
    """Validated messages in the form the model's template expects, plus their images in order.

    Text models: content becomes one string. Vision models: content becomes a part list.
    Every occurrence of a string of ``specials`` (the tokenizer's special tokens) in the text is
    escaped visibly (:func:`rmkit.prompts.neutralize.neutralize`).
    Returns ``(messages, images)`` where ``images`` are the ``image`` values (paths or PIL images).
    """
    from rmkit.prompts.neutralize import neutralize

    if not isinstance(messages, list) or not messages:
        raise RmkitError(f"messages: expected a non-empty list, got {type(messages).__name__}")
    out, images = [], []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            raise RmkitError(
                f"messages[{i}]: expected {{'role': one of {ROLES}, 'content': ...}}, got {msg!r:.80}"
            )
        parts = _parts(msg.get("content"), i)
        if specials:
            parts = [
                {**p, "text": neutralize(p["text"], specials)} if p["type"] == "text" else p
                for p in parts
            ]
        images += [p["image"] for p in parts if p["type"] == "image"]
        if is_vision:
            content: Any = parts
        elif any(p["type"] == "image" for p in parts):
            raise RmkitError(
                f"messages[{i}]: has an image part but the model reads text only",
                hint="use a vision-language model, or a caption instead of the image",
            )
        else:
            content = "".join(p["text"] for p in parts)
        out.append({"role": msg["role"], "content": content})
    return out, images


def _parts(content: Any, i: int) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise RmkitError(f"messages[{i}].content: expected a string or a list of parts")
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        ok = (kind == "text" and isinstance(part.get("text"), str)) or (
            kind == "image" and part.get("image") is not None
        )
        if not ok:
            raise RmkitError(
                f"messages[{i}].content[{j}]: expected {{'type': 'text', 'text': str}} or "
                f"{{'type': 'image', 'image': path}}, got {part!r:.80}"
            )
    return content


def special_tokens(loaded) -> tuple[str, ...]:
    """The special-token strings of ``loaded``'s tokenizer (escaped in message text)."""
    from rmkit.prompts.neutralize import special_token_strings

    return special_token_strings(loaded.tokenizer)


def load_image(image: Any):
    """An RGB ``PIL.Image`` from a path (or an image passed through)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise RmkitError(
            f"image '{path}': file not found",
            hint="image paths in messages must be absolute (or relative to the working folder)",
        ) from None
    except (UnidentifiedImageError, OSError) as e:
        raise RmkitError(f"image '{path}': cannot be read as an image ({e})") from None


def render(loaded, messages: list[dict], add_generation_prompt: bool) -> str:
    """The chat-template text for normalised ``messages``."""
    from jinja2 import TemplateError

    owner = loaded.processor if loaded.is_vision else loaded.tokenizer
    if not getattr(owner, "chat_template", None):
        raise RmkitError(
            f"model '{loaded.spec}': has no chat template",
            hint="use an instruction-tuned model folder with chat_template.jinja",
        )
    try:
        return owner.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except TemplateError as e:
        raise RmkitError(f"model '{loaded.spec}': chat template failed: {e}") from None


def _encode(loaded, texts: list[str], images: list[list], **kw) -> dict:
    """Tokenise rendered ``texts`` (and their per-text image lists) as PyTorch tensors."""
    if not loaded.is_vision:
        return dict(loaded.tokenizer(texts, add_special_tokens=False, return_tensors="pt", **kw))
    loaded_images = [[load_image(x) for x in group] for group in images]
    batch = loaded.processor(
        text=texts,
        images=loaded_images if any(loaded_images) else None,
        add_special_tokens=False,
        return_tensors="pt",
        **kw,
    )
    return dict(batch)


def prepare_inputs(
    loaded, conversations: list[list[dict]], add_generation_prompt: bool = True
) -> dict:
    """A left-padded batch of chat prompts for ``model.generate`` or a forward pass.

    Returns ``input_ids``/``attention_mask`` of shape (B, L) and, for vision models, the
    processor's image tensors (e.g. ``pixel_values``, ``image_grid_thw``).
    """
    texts, images = [], []
    specials = special_tokens(loaded)
    for conv in conversations:
        msgs, imgs = normalize_messages(conv, loaded.is_vision, specials)
        texts.append(render(loaded, msgs, add_generation_prompt))
        images.append(imgs)
    return _encode(loaded, texts, images, padding=True, padding_side="left")


def end_of_turn_ids(loaded) -> list[int]:
    """Token ids that end an assistant turn (eos, generation eos, known chat end tokens)."""
    tok = loaded.tokenizer
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    gen = getattr(loaded.model, "generation_config", None)
    gen_eos = getattr(gen, "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    vocab = tok.get_vocab()
    ids.update(vocab[t] for t in _END_TOKENS if t in vocab)
    return sorted(ids)


def encode_sft(loaded, messages: list[dict]) -> dict:
    """One SFT example: the loss covers only the final assistant turn.

    Returns 1-D ``input_ids``, ``attention_mask`` and ``labels`` (length L; ``labels`` is -100
    except on the final assistant message's tokens through its end-of-turn token) plus, for
    vision models, the processor's image tensors for the conversation.
    """
    msgs, images = normalize_messages(messages, loaded.is_vision, special_tokens(loaded))
    if len(msgs) < 2 or msgs[-1]["role"] != "assistant":
        raise RmkitError(
            "messages: an SFT example needs at least one prompt message and must end with an "
            "assistant message",
            hint="trace records end with the assistant turn to learn",
        )
    last = msgs[-1]["content"]
    if not isinstance(last, str) and any(p["type"] == "image" for p in last):
        raise RmkitError("messages[-1]: the assistant turn to learn cannot contain images")
    prompt_text = render(loaded, msgs[:-1], add_generation_prompt=True)
    full_text = render(loaded, msgs, add_generation_prompt=False)
    prompt = _encode(loaded, [prompt_text], [images])
    full = _encode(loaded, [full_text], [images])
    prompt_ids = prompt["input_ids"][0]
    full_ids = full["input_ids"][0]
    n = len(prompt_ids)
    if len(full_ids) <= n or not bool((full_ids[:n] == prompt_ids).all()):
        raise RmkitError(
            f"model '{loaded.spec}': the tokenised prompt is not a prefix of the tokenised "
            "conversation, so the answer tokens cannot be located",
            hint="the chat template renders earlier turns differently once the answer is added "
            "(e.g. it strips reasoning) or the answer is empty; use a template without that",
        )
    labels = full_ids.clone()
    labels[:n] = IGNORE_INDEX
    end_ids = set(end_of_turn_ids(loaded))
    ends = [i for i in range(n, len(full_ids)) if int(full_ids[i]) in end_ids]
    if ends:
        labels[ends[-1] + 1 :] = IGNORE_INDEX
    else:
        log.debug("no end-of-turn token after the answer; labelling every answer token")
    example = {"input_ids": full_ids, "labels": labels}
    for key, value in full.items():
        if key == "input_ids":
            continue
        seq = key in SEQUENCE_KEYS or (
            value.dim() == 2 and tuple(value.shape) == (1, len(full_ids))
        )
        example[key] = value[0] if seq else value
    example.setdefault("attention_mask", full_ids.new_ones(len(full_ids)))
    return example


def _batch_first(key: str, value) -> bool:
    """Whether a non-sequence tensor carries one leading entry per example (pad, then stack).

    Idefics3-style ``pixel_values`` (1, n_images, C, H, W) and ``pixel_attention_mask`` are; the
    Qwen-VL (patches, dim) and LLaVA (n_images, C, H, W) forms are concatenated over examples.
    """
    return value.dim() == 5 or key == "pixel_attention_mask"


def collate(loaded, examples: list[dict]) -> dict:
    """Right-padded batch of :func:`encode_sft` examples (labels padded with -100)."""
    import torch
    import torch.nn.functional as F

    if not examples:
        raise RmkitError("collate: no examples")
    pad_id = loaded.tokenizer.pad_token_id
    keys = list(dict.fromkeys(k for ex in examples for k in ex))
    length = max(len(ex["input_ids"]) for ex in examples)
    batch = {}
    for key in keys:
        values = [ex.get(key) for ex in examples]
        first = next(v for v in values if v is not None)
        if key in SEQUENCE_KEYS or first.dim() == 1:
            fill = {"input_ids": pad_id, "labels": IGNORE_INDEX}.get(key, 0)
            rows = [first.new_full((0,), fill) if v is None else v for v in values]
            batch[key] = torch.stack([F.pad(v, (0, length - len(v)), value=fill) for v in rows])
        elif _batch_first(key, first):
            batch[key] = _pad_stack(values)
        else:
            batch[key] = torch.cat([v for v in values if v is not None], dim=0)
    return batch


def _pad_stack(values: list) -> Any:
    """Zero-pad (1, *dims) tensors to the largest dims and concatenate; None -> all zeros."""
    import torch
    import torch.nn.functional as F

    present = [v for v in values if v is not None]
    shape = [max(v.shape[d] for v in present) for d in range(1, present[0].dim())]
    out = []
    for v in values:
        if v is None:
            out.append(present[0].new_zeros((1, *shape)))
            continue
        pad: list[int] = []
        for d in reversed(range(1, v.dim())):
            pad += [0, shape[d - 1] - v.shape[d]]
        out.append(F.pad(v, pad, value=0))
    return torch.cat(out, dim=0)
