"""Render a unified preference record into judge chat messages with a template.

The Jinja body produces the user message as text. Media (record images, inline image parts of a
chat prompt, candidate images of generation tasks) enter the text as opaque markers; after
rendering, the text is split at the markers into ``{"type": "text"}`` and ``{"type": "image"}``
parts, so the template decides where every image goes. Caption parts (images replaced by their
descriptions) become a marked text block ``[Image description: ...]``.

All record text (prompt, candidates, captions) passes through :func:`_clean`: NUL bytes are
removed (so text cannot forge a media marker) and control-token strings (``<|im_end|>``,
``</s>``, ``<end_of_utterance>``, any ``<|...|>``) are escaped visibly
(:mod:`rmkit.prompts.neutralize`), so a candidate cannot close the user turn of the judge
prompt, whichever judge reads it. Local models escape their own tokenizer's special tokens once
more when the messages are tokenised (:mod:`rmkit.models.chat`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from rmkit.errors import RmkitError
from rmkit.prompts.neutralize import neutralize_common
from rmkit.prompts.templates import JudgeTemplate, get_template, letter_label

GENERATION_TASKS = ("image_generation", "video_generation")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".m4v")
_MARKER_RE = re.compile("\x00MEDIA(\\d+)\x00")
ROLE_NAMES = {"user": "User", "assistant": "Assistant", "system": "System"}


def caption_block(text: str) -> str:
    """How a caption that stands in for an image is shown to the judge."""
    return f"[Image description: {text.strip()}]"


class _Media:
    """Collects media references and hands out the markers that stand for them in the text."""

    def __init__(self, image_root: str | os.PathLike | None):
        self.root = Path(image_root).absolute() if image_root is not None else None
        self.paths: list[str] = []

    def resolve(self, ref: str) -> str:
        if re.match(r"^(data:|https?://|file://)", ref) or os.path.isabs(ref) or self.root is None:
            return ref
        return str(self.root / ref)

    def marker(self, ref: str) -> str:
        self.paths.append(self.resolve(ref))
        return f"\x00MEDIA{len(self.paths) - 1}\x00"

    def part(self, index: int) -> dict[str, str]:
        path = self.paths[index]
        if path.lower().endswith(VIDEO_SUFFIXES):
            return {"type": "video", "video": path}
        return {"type": "image", "image": path}


def _clean(text: str) -> str:
    """User-supplied text with NUL bytes removed (so it can never forge a media marker) and
    control-token strings escaped visibly (so it can never forge a chat turn)."""
    return neutralize_common(text.replace("\x00", ""))


def _content_text(content: Any, media: _Media, where: str) -> tuple[str, set[str]]:
    """Render one message content (str or parts) to text with markers; return inline image refs."""
    if isinstance(content, str):
        return _clean(content), set()
    pieces, inline = [], set()
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            pieces.append(_clean(part["text"]))
        elif kind == "image":
            pieces.append(media.marker(part["image"]))
            inline.add(part["image"])
        elif kind == "caption":
            pieces.append(caption_block(_clean(part["text"])))
        else:
            raise RmkitError(
                f"{where}[{j}]: unknown content part {part!r}",
                hint="parts are {'type': 'text'|'image'|'caption', ...}",
            )
    return "\n".join(p for p in pieces if p), inline


def _render_prompt(prompt: Any, media: _Media, rec_id: str) -> tuple[str, bool, set[str]]:
    """The prompt as readable text, whether it is a multi-turn context, and its inline images."""
    if isinstance(prompt, str):
        return _clean(prompt), False, set()
    if not isinstance(prompt, list) or not prompt:
        raise RmkitError(f"record {rec_id}: 'prompt' must be a string or a list of chat messages")
    if len(prompt) == 1 and prompt[0].get("role") == "user":
        text, inline = _content_text(prompt[0]["content"], media, f"record {rec_id}: prompt[0]")
        return text, False, inline
    turns, inline = [], set()
    for i, msg in enumerate(prompt):
        text, refs = _content_text(msg.get("content", ""), media, f"record {rec_id}: prompt[{i}]")
        inline |= refs
        turns.append(f"[{ROLE_NAMES.get(msg.get('role'), str(msg.get('role')))}]\n{text}")
    return "\n\n".join(turns), True, inline


def _check_order(order: list[int], n_cands: int, tpl: JudgeTemplate, rec_id: str) -> None:
    bad = [
        i for i in order if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_cands
    ]
    if bad or len(set(order)) != len(order):
        raise RmkitError(
            f"record {rec_id}: order {order!r} is not a list of distinct candidate indices "
            f"0..{n_cands - 1}",
            hint="pass a permutation of range(len(record['candidates']))",
        )
    tpl.check_count(len(order), rec_id)


def _to_parts(text: str, media: _Media) -> str | list[dict[str, str]]:
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    if not _MARKER_RE.search(text):
        return text
    parts: list[dict[str, str]] = []
    for k, piece in enumerate(_MARKER_RE.split(text)):
        if k % 2 == 1:
            parts.append(media.part(int(piece)))
        elif piece.strip():
            parts.append({"type": "text", "text": piece.strip("\n")})
    return parts


def _render_text(
    tpl: JudgeTemplate, context: dict[str, Any], media: _Media, rec_id: str
) -> tuple[str, str]:
    """Render the body and the system prompt; check every media marker was placed."""
    try:
        user = tpl.jinja("body").render(**context)
        system = tpl.jinja("system").render(**context) if tpl.spec.system else ""
    except RmkitError:
        raise
    except Exception as e:  # undefined variables, sandbox violations, filters
        raise RmkitError(
            f"judge template '{tpl.name}' failed to render record {rec_id}: {e}",
            hint="docs/templates.md lists the variables a template can use",
        ) from None
    placed = {int(i) for i in _MARKER_RE.findall(user)}
    lost = [media.paths[i] for i in range(len(media.paths)) if i not in placed]
    if lost or _MARKER_RE.search(system):
        raise RmkitError(
            f"judge template '{tpl.name}' left out media of record {rec_id}: {lost or 'system'}",
            hint="a template must place every entry of 'images' and every candidate in the user "
            "message",
        )
    return user, system


def render_judge_messages(
    record: dict[str, Any],
    order: list[int],
    template: str | os.PathLike | JudgeTemplate = "default",
    image_root: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Chat messages asking the judge to compare ``record``'s candidates shown in ``order``.

    ``order`` lists candidate indices in the order they are shown: ``[1, 0]`` shows candidate 1
    as "Response 1" and candidate 0 as "Response 2". A pointwise template takes one index.
    Relative image paths are joined to ``image_root`` (made absolute); without a root they are
    left as they are. Returns ``[system?, user]`` in rmkit's chat-message convention.
    """
    tpl = get_template(template)
    rec_id = str(record.get("id", "<no id>"))
    cands = record.get("candidates")
    if not isinstance(cands, list) or not cands:
        raise RmkitError(f"record {rec_id}: 'candidates' must be a non-empty list")
    _check_order(list(order), len(cands), tpl, rec_id)
    task = record.get("task", "text")
    tpl.check_task(task, rec_id)
    media = _Media(image_root)
    prompt, multi_turn, inline = _render_prompt(record.get("prompt", ""), media, rec_id)
    images = [media.marker(ref) for ref in record.get("images") or [] if ref not in inline]
    # Caption-substituted generation records carry text descriptions in place of the images.
    is_gen = task in GENERATION_TASKS
    as_files = is_gen and not (record.get("meta") or {}).get("caption_substituted")
    shown = []
    for pos, idx in enumerate(order):
        content = media.marker(cands[idx]) if as_files else _clean(str(cands[idx]))
        shown.append({"n": pos + 1, "letter": letter_label(pos), "content": content, "index": idx})
    context = {
        "task": task,
        "prompt": prompt,
        "multi_turn": multi_turn,
        "images": images,
        "candidates": shown,
        "n": len(shown),
        "answers": tpl.answers(len(shown)),
        "types": list(dict.fromkeys(tpl.spec.types.values())),
        "has_captions": "[Image description:" in prompt,
        "is_generation": is_gen,
        "score_range": tpl.spec.score_range,
    }
    user, system = _render_text(tpl, context, media, rec_id)
    messages: list[dict[str, Any]] = []
    if system.strip():
        messages.append({"role": "system", "content": system.strip()})
    messages.append({"role": "user", "content": _to_parts(user, media)})
    return messages
