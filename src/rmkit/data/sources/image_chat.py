"""Converters for image preference data in chat formats: OpenAI messages and TRL vision.

Both keep the images where the messages put them (``image_url`` parts with data URLs or paths;
``{"type": "image"}`` slots filled from the ``images`` column, in order). Task
``image_understanding``; see :mod:`rmkit.data.sources.image_understanding` for the others.
"""

from __future__ import annotations

from typing import Any

from rmkit.data.sources.base import Pair, RowError, answer, require
from rmkit.data.sources.vision import (
    attach_images,
    chat_messages,
    fill_image_parts,
    image_sources,
    prompt_images,
    text_of,
    understanding_pair,
)


def _prompt_and_answers(row: dict[str, Any], cols: dict[str, str]) -> tuple[list[dict], str, str]:
    """Explicit prompt + chosen/rejected answers, or chosen/rejected whole conversations."""
    pv = row.get(cols["prompt"])
    if pv is None and cols.get("messages") and row.get(cols["messages"]) is not None:
        pv = row[cols["messages"]]
    answers, contexts = [], []
    for k in ("chosen", "rejected"):
        v = require(row, cols[k])
        if isinstance(v, str):
            answers.append(v)
            contexts.append(None)
            continue
        msgs = chat_messages([v] if isinstance(v, dict) else v, cols[k])
        if msgs[-1]["role"] != "assistant":
            raise RowError(cols[k], "an assistant answer (or a conversation ending with one)")
        answers.append(text_of(msgs[-1]["content"], cols[k]))
        contexts.append(msgs[:-1] or None)
    if pv is not None:
        prompt = (
            [{"role": "user", "content": pv}]
            if isinstance(pv, str)
            else chat_messages(pv, cols["prompt"])
        )
    elif contexts[0] is None:
        raise RowError(cols["prompt"], "a prompt (or chosen/rejected given as whole conversations)")
    elif _canon(contexts[0]) != _canon(contexts[1]):
        raise RowError(cols["rejected"], "the same conversation context as the chosen column")
    else:
        prompt = contexts[0]
    return prompt, answer(answers[0], cols["chosen"]), answer(answers[1], cols["rejected"])


def _canon(msgs: list[dict[str, Any]]) -> list:
    """Messages with image placeholders replaced by their values (fields differ by column)."""
    return [
        (
            m["role"],
            m["content"]
            if isinstance(m["content"], str)
            else [
                p.get("text") if p["type"] == "text" else repr(getattr(p["image"], "value", None))
                for p in m["content"]
            ],
        )
        for m in msgs
    ]


def openai_messages(row: dict[str, Any], opts: dict[str, Any]) -> list[Pair]:
    """OpenAI chat content parts; images are ``image_url`` parts (data URLs or local paths)."""
    cols = {
        "prompt": "prompt",
        "messages": "messages",
        "chosen": "chosen",
        "rejected": "rejected",
        "id": "id",
        **(opts.get("columns") or {}),
    }
    prompt, c, r = _prompt_and_answers(row, cols)
    if any(
        isinstance(m["content"], list)
        and any(p["image"] is None for p in m["content"] if p["type"] == "image")
        for m in prompt
    ):
        raise RowError(cols["prompt"], "image_url parts holding a URL")
    if not prompt_images(prompt):
        raise RowError(
            cols["prompt"], "at least one image_url part (use a text format for text-only data)"
        )
    key = str(row[cols["id"]]) if row.get(cols["id"]) is not None else None
    return [understanding_pair(prompt, [c, r], 0, key=key)]


def trl_vision(row: dict[str, Any], opts: dict[str, Any]) -> list[Pair]:
    """TRL vision preference: ``{"type": "image"}`` parts take the ``images`` column in order."""
    cols = {
        "prompt": "prompt",
        "chosen": "chosen",
        "rejected": "rejected",
        "images": "images",
        "id": "id",
        **(opts.get("columns") or {}),
    }
    prompt, c, r = _prompt_and_answers(row, cols)
    images = image_sources(
        row.get(cols["images"]) if row.get(cols["images"]) is not None else row.get("image"),
        cols["images"],
    )
    n_slots = sum(
        1
        for m in prompt
        if isinstance(m["content"], list)
        for p in m["content"]
        if p["type"] == "image" and p["image"] is None
    )
    if (
        n_slots == 0
        and images
        and not any("<image>" in m["content"] for m in prompt if isinstance(m["content"], str))
    ):
        prompt = attach_images(prompt, images, cols["images"], strict=False)
    else:
        fill_image_parts(prompt, images, cols["images"])
    if not prompt_images(prompt):
        raise RowError(cols["images"], "at least one image")
    key = str(row[cols["id"]]) if row.get(cols["id"]) is not None else None
    return [understanding_pair(prompt, [c, r], 0, key=key)]
