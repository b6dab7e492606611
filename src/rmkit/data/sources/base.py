"""What a converter is: a pure function from one source row to zero or more preference pairs.

A converter never reads files and never shuffles: it maps a row to :class:`Pair` objects with the
preferred candidate's index as given by the source. The build pipeline handles validation of the
result, filters, deduplication, position balancing, splitting and writing. A malformed row raises
:class:`RowError` naming the field and what was expected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class RowError(Exception):
    """A row the converter cannot use: ``field`` and what was ``expected`` there.

    ``null=True`` says the field is present but ``null`` (reported as "field 'x' is null;
    expected ..." rather than as missing).
    """

    def __init__(self, field: str, expected: str, *, null: bool = False):
        super().__init__(f"{field}: {'is null; ' if null else ''}{expected}")
        self.field = field
        self.expected = expected
        self.null = null


def missing_or_null(row: dict[str, Any], key: str, expected: str = "a value") -> RowError:
    """The error for a field that is absent from ``row`` or present but ``null``."""
    if key in row:
        return RowError(key, expected, null=True)
    return RowError(key, f"{expected} (field is missing)")


class Skip(Exception):
    """A well-formed row that carries no usable preference (e.g. a tie when ties are dropped).

    The part of ``reason`` before the first ``:`` is the name the drop is counted under in the
    manifest (``counts.dropped``) and the summary.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


EMPTY_ANSWER = "empty_answer"


class EmptyAnswer(Skip):
    """A candidate answer that is an empty (or whitespace-only) string.

    Real sources contain these legitimately (HH-RLHF has transcripts whose final
    ``Assistant:`` turn is empty), so they are a named filter (``filters.empty_answer``:
    ``drop`` by default, counted as ``empty_answer``), not a malformed row.
    """

    def __init__(self, field: str):
        super().__init__(f"{EMPTY_ANSWER}: '{field}' is an empty answer")
        self.field = field


@dataclass(frozen=True, eq=False)
class ImageSource:
    """An image as the source row holds it, before the build stores it.

    ``value`` is what the row has (bytes, a ``{"bytes", "path"}`` struct, a path, a data URL or
    base64 text); ``field`` names where it came from (``"image"``, ``"images[1]"``) for errors.
    The build replaces every ImageSource of a :class:`Pair` by the stored file's reference
    (:func:`rmkit.data.images.materialize`), so converters never read image data.
    """

    value: Any
    field: str


@dataclass
class Pair:
    prompt: str | list[dict[str, Any]]
    candidates: list[Any]  # text, or ImageSource / references for generation tasks
    label: int | None
    task: str = "text"
    key: str | None = None  # the source's own id, when it has one
    label_kind: str = "preferred"
    subset: str | None = None  # appended to the source name, e.g. "hh-rlhf/helpful-base"
    images: list[Any] = field(default_factory=list)  # ImageSource placeholders, then references
    meta: dict[str, Any] = field(default_factory=dict)
    cluster: str | int | float | bool | None = None  # the unit pairs share (docs/records.md)


@dataclass(frozen=True)
class ConverterSpec:
    """A named converter and the options it understands (checked before any row is read)."""

    name: str
    fn: Callable[[dict[str, Any], dict[str, Any]], list[Pair]]
    description: str
    options: dict[str, Any] = field(default_factory=dict)  # option name -> default
    task: str = "text"
    builtin: bool = True  # built-in converters' output is validated by the test suite
    check: Callable[[dict[str, Any]], str | None] | None = None  # option check: a problem or None


def require(row: dict[str, Any], key: str, expected: str = "a value") -> Any:
    if row.get(key) is None:
        raise missing_or_null(row, key, expected)
    return row[key]


def require_str(row: dict[str, Any], key: str, *, allow_empty: bool = False) -> str:
    v = require(row, key, "a string")
    if not isinstance(v, str):
        raise RowError(key, f"a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise RowError(key, "a non-empty string")
    return v


def normalize_messages(value: Any, field: str) -> list[dict[str, Any]]:
    """Accept OpenAI-style ``{role, content}`` or ShareGPT ``{from, value}`` messages."""
    if not isinstance(value, list) or not value:
        raise RowError(field, "a non-empty list of chat messages")
    out = []
    roles = {
        "human": "user",
        "user": "user",
        "gpt": "assistant",
        "assistant": "assistant",
        "system": "system",
        "bot": "assistant",
    }
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RowError(f"{field}[{i}]", "an object with role and content")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if role not in roles:
            raise RowError(f"{field}[{i}].role", f"one of user/assistant/system (got {role!r})")
        if isinstance(content, list):
            texts = [
                p.get("text", "")
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            ]
            if len(texts) != len(content):
                raise RowError(
                    f"{field}[{i}].content", "text parts only (this is a text converter)"
                )
            content = "".join(texts)
        if not isinstance(content, str):
            raise RowError(f"{field}[{i}].content", f"a string, got {type(content).__name__}")
        out.append({"role": roles[role], "content": content})
    return out


def prompt_from_messages(msgs: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A single user turn becomes a plain string; longer contexts stay chat messages."""
    if len(msgs) == 1 and msgs[0]["role"] == "user":
        return msgs[0]["content"]
    return msgs


def split_conversation(msgs: list[dict[str, Any]], field: str) -> tuple[list[dict[str, Any]], str]:
    """Split a conversation into (context, final assistant reply)."""
    if msgs[-1]["role"] != "assistant":
        raise RowError(field, "a conversation ending with an assistant message")
    if len(msgs) < 2:
        raise RowError(field, "a conversation with a prompt before the assistant reply")
    return msgs[:-1], msgs[-1]["content"]


def nonempty(text: str, field: str) -> str:
    """``text`` when it is not blank; a blank one is a malformed row (use for prompts)."""
    if not text.strip():
        raise RowError(field, "a non-empty string")
    return text


def answer(text: str, field: str) -> str:
    """A candidate answer: a blank one raises :class:`EmptyAnswer` (the ``empty_answer`` filter)."""
    if not text.strip():
        raise EmptyAnswer(field)
    return text
