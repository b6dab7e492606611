"""The unified preference record and SFT trace record: schema, validation, reading, writing.

See ``docs/records.md`` for the field reference. Validation is a hand-written function rather
than a pydantic model because converters call it on every row (hundreds of thousands per run)
and its messages must name the exact field that is wrong.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

from rmkit.errors import DataError
from rmkit.utils.io import atomic_open, dumps_line, iter_jsonl

TASKS = (
    "text",
    "image_understanding",
    "image_generation",
    "video_understanding",
    "video_generation",
)
LABEL_KINDS = ("preferred", "tie", "both_bad")
ROLES = ("system", "user", "assistant")

RECORD_FIELDS = (
    "id",
    "source",
    "task",
    "prompt",
    "images",
    "candidates",
    "label",
    "label_kind",
    "cluster",
    "captions",
    "meta",
)


def make_record(
    *,
    id: str,
    source: str,
    task: str,
    prompt: str | list[dict[str, Any]],
    candidates: list[Any],
    label: int | None,
    images: list[str] | None = None,
    label_kind: str = "preferred",
    captions: dict[str, str] | None = None,
    meta: dict[str, Any] | None = None,
    cluster: str | int | float | bool | None = None,
) -> dict[str, Any]:
    """Build a record dict with fields in canonical order (so output bytes are stable).

    ``cluster`` (optional) names the unit the record shares with others (e.g. the fact several
    pairs were built from); it is written only when given."""
    rec: dict[str, Any] = {
        "id": id,
        "source": source,
        "task": task,
        "prompt": prompt,
        "images": images or [],
        "candidates": candidates,
        "label": label,
        "label_kind": label_kind,
    }
    if cluster is not None:
        rec["cluster"] = cluster
    if captions:
        rec["captions"] = captions
    rec["meta"] = meta or {}
    return rec


def _check_content(content: Any, field: str) -> str | None:
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return f"'{field}' must be a string or a list of content parts"
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("text", "image", "caption"):
            return f"'{field}[{j}]' must be a part {{'type': 'text'|'image'|'caption', ...}}"
        if part["type"] in ("text", "caption") and not isinstance(part.get("text"), str):
            return f"'{field}[{j}].text' must be a string"
        if part["type"] == "image" and not isinstance(part.get("image"), str):
            return f"'{field}[{j}].image' must be an image reference (a relative path)"
    return None


def check_messages(msgs: Any, field: str) -> str | None:
    """Return a problem description for a chat-message list, or None when it is valid."""
    if not isinstance(msgs, list) or not msgs:
        return f"'{field}' must be a non-empty list of chat messages"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return f"'{field}[{i}]' must be an object with 'role' and 'content'"
        if m.get("role") not in ROLES:
            return f"'{field}[{i}].role' must be one of {', '.join(ROLES)} (got {m.get('role')!r})"
        problem = _check_content(m.get("content"), f"{field}[{i}].content")
        if problem:
            return problem
    return None


CLUSTER_EXPECTED = "a string, number or boolean naming the unit records share (or null/absent)"


def cluster_problem(value: Any) -> str | None:
    """What is wrong with a ``cluster`` value (None when it is valid: absent/null, a non-empty
    string, a number or a boolean, i.e. a hashable JSON scalar)."""
    if value is None or isinstance(value, (bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{CLUSTER_EXPECTED}; got {value!r}"
    if isinstance(value, str):
        return None if value.strip() else f"{CLUSTER_EXPECTED}; got an empty string"
    kind = {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)
    return f"{CLUSTER_EXPECTED}; got {kind}"


def record_problem(rec: Any) -> tuple[str, str] | None:
    """Validate one preference record. Return ``(field, what was expected)`` or None if valid."""
    if not isinstance(rec, dict):
        return "<row>", "a JSON object"
    for key in ("id", "source"):
        if not isinstance(rec.get(key), str) or not rec.get(key):
            return key, "a non-empty string"
    if rec.get("task") not in TASKS:
        return "task", f"one of {', '.join(TASKS)} (got {rec.get('task')!r})"
    prompt = rec.get("prompt")
    if isinstance(prompt, str):
        if not prompt.strip():
            return "prompt", "a non-empty string or chat messages"
    else:
        problem = check_messages(prompt, "prompt")
        if problem:
            return "prompt", problem
    images = rec.get("images", [])
    if not isinstance(images, list) or not all(isinstance(x, str) and x for x in images):
        return "images", "a list of image references (relative paths)"
    cands = rec.get("candidates")
    if not isinstance(cands, list) or len(cands) < 2:
        return "candidates", "a list of at least 2 candidates"
    for i, c in enumerate(cands):
        if not isinstance(c, str) or not c.strip():
            return (
                f"candidates[{i}]",
                "a non-empty string (text, or an image reference for generation tasks)",
            )
    label = rec.get("label")
    kind = rec.get("label_kind", "preferred")
    if kind not in LABEL_KINDS:
        return "label_kind", f"one of {', '.join(LABEL_KINDS)}"
    if kind == "preferred":
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(cands):
            return "label", f"an index into candidates (0..{len(cands) - 1})"
    elif label is not None:
        return "label", f"null when label_kind is '{kind}'"
    caps = rec.get("captions")
    if caps is not None and (
        not isinstance(caps, dict) or not all(isinstance(v, str) for v in caps.values())
    ):
        return "captions", "a mapping of image reference to caption text"
    problem = cluster_problem(rec.get("cluster"))
    if problem:
        return "cluster", problem
    if not isinstance(rec.get("meta", {}), dict):
        return "meta", "an object"
    return None


def trace_problem(rec: Any) -> tuple[str, str] | None:
    """Validate an SFT trace record (``messages`` ending with the assistant target)."""
    if not isinstance(rec, dict):
        return "<row>", "a JSON object"
    if not isinstance(rec.get("id"), str) or not rec["id"]:
        return "id", "a non-empty string"
    problem = check_messages(rec.get("messages"), "messages")
    if problem:
        return "messages", problem
    if rec["messages"][-1]["role"] != "assistant":
        return "messages", "the last message must be the assistant target"
    images = rec.get("images", [])
    if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
        return "images", "a list of image references"
    return None


def read_records(path: str | os.PathLike, kind: str = "record") -> Iterator[dict[str, Any]]:
    """Stream validated records (``kind`` = "record" or "trace"); errors name file, line, field."""
    check = record_problem if kind == "record" else trace_problem
    for lineno, obj in iter_jsonl(path):
        problem = check(obj)
        if problem:
            raise DataError(str(path), lineno, problem[0], f"expected {problem[1]}")
        yield obj


def load_records(path: str | os.PathLike, kind: str = "record") -> list[dict[str, Any]]:
    from pathlib import Path

    if not Path(path).is_file():
        from rmkit.errors import RmkitError

        raise RmkitError(
            f"records file not found: {path}", hint="build one with `rmkit build-data`"
        )
    return list(read_records(path, kind))


def write_records(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write records atomically (temporary name, then rename). Returns the count."""
    n = 0
    with atomic_open(path, "wb") as fh:
        for rec in records:
            fh.write(dumps_line(rec))
            n += 1
    return n


def prompt_text(prompt: str | list[dict[str, Any]]) -> str:
    """A canonical plain-text rendering of a prompt (for hashing, dedup and length filters)."""
    if isinstance(prompt, str):
        return prompt
    parts = []
    for m in prompt:
        c = m["content"]
        if isinstance(c, str):
            parts.append(f"{m['role']}: {c}")
        else:
            parts.append(
                f"{m['role']}: "
                + " ".join(
                    p.get("text", "") if p["type"] != "image" else f"<image:{p['image']}>"
                    for p in c
                )
            )
    return "\n".join(parts)
