"""Judge templates: Jinja files with a YAML front matter that says how the verdict looks.

A template file (built-in ones live in ``rmkit/prompts/templates/``) is::

    ---
    name: default
    answers: "{n}"            # per shown position: a pattern ({n} = 1-based, {letter} = A, B, ...,
                              # Z, AA, AB, ...) or an explicit list, one string per position
    blocks: [think, answer]   # tagged blocks the output must contain, in this order
    system: "You are ..."     # optional system prompt (rendered with Jinja too)
    ---
    ... Jinja body: the user message ...

The front matter is the template's *spec*; :func:`get_template` validates it (unknown keys are
errors with the closest key suggested) and returns a :class:`JudgeTemplate`. The body and the
system prompt are compiled lazily in a sandboxed Jinja environment. See ``docs/templates.md`` for
the variables a body can use.
"""

from __future__ import annotations

import difflib
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rmkit.config.loader import load_yaml
from rmkit.config.validate import StrictModel, validate_config
from rmkit.errors import RmkitError

TEMPLATE_DIR = Path(__file__).parent / "templates"
BLOCKS = ("type", "caption", "think", "answer")
OUTCOMES = ("preferred", "tie", "both_bad")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def letter_label(index: int) -> str:
    """The letter label of 0-based shown position ``index``: A..Z, then AA, AB, ..., ZZ, AAA, ...

    (spreadsheet-column style), so any number of candidates has distinct labels (SECURITY-REVIEW
    L5: more than 26 candidates used to crash with an IndexError).
    """
    if index < 0:
        raise ValueError(f"position {index} is negative")
    label = ""
    n = index + 1
    while n:
        n, rem = divmod(n - 1, 26)
        label = LETTERS[rem] + label
    return label


def format_answer(pattern: str, index: int) -> str:
    """``pattern`` (an answers pattern) for 0-based shown position ``index``."""
    fields = {"n": index + 1}
    if "{letter}" in pattern:
        fields["letter"] = letter_label(index)
    return pattern.format(**fields)


# What the model writes inside <type>…</type> for each record task.
TYPE_NAMES = {
    "text": "text",
    "image_understanding": "image understanding",
    "image_generation": "image generation",
    "video_understanding": "video understanding",
    "video_generation": "video generation",
}


class TemplateSpec(StrictModel):
    """The YAML front matter of a template file."""

    name: str
    description: str = ""
    kind: Literal["pairwise", "pointwise"] = "pairwise"
    answer_style: Literal["tag", "bracket"] = "tag"
    answers: str | list[str] = "{n}"
    outcomes: dict[str, Literal["tie", "both_bad"]] = Field(default_factory=dict)
    blocks: list[Literal["type", "caption", "think", "answer"]] = Field(
        default_factory=lambda: ["think", "answer"]
    )
    score_range: tuple[float, float] | None = None
    min_candidates: int = 2
    max_candidates: int | None = None
    types: dict[str, str] = Field(default_factory=lambda: dict(TYPE_NAMES))
    tasks: list[
        Literal[
            "text",
            "image_understanding",
            "image_generation",
            "video_understanding",
            "video_generation",
        ]
    ] = Field(default_factory=lambda: list(TYPE_NAMES))
    system: str | None = None

    @field_validator("blocks")
    @classmethod
    def _blocks_in_order(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or v != sorted(v, key=BLOCKS.index):
            raise ValueError(f"blocks must be distinct and in the order {', '.join(BLOCKS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TemplateSpec:
        if self.answer_style == "tag" and "answer" not in self.blocks:
            raise ValueError("answer_style 'tag' needs 'answer' in blocks")
        if self.answer_style == "bracket" and self.blocks:
            raise ValueError(
                "answer_style 'bracket' writes a free explanation and [[X]]: blocks: []"
            )
        if self.kind == "pointwise" and self.score_range is None:
            raise ValueError("a pointwise template needs score_range: [low, high]")
        pattern = self.answers
        if isinstance(pattern, str) and "{n}" not in pattern and "{letter}" not in pattern:
            raise ValueError("an answers pattern must contain {n} or {letter}")
        if self.min_candidates < 1:
            raise ValueError("min_candidates must be at least 1")
        return self

    def candidate_limits(self) -> tuple[int, int | None]:
        """(fewest, most) candidates this template can show; None means no upper limit."""
        if self.kind == "pointwise":
            return 1, 1
        hi = self.max_candidates
        if isinstance(self.answers, list):
            hi = len(self.answers) if hi is None else min(hi, len(self.answers))
        return self.min_candidates, hi


@dataclass(frozen=True, eq=False)
class JudgeTemplate:
    """A loaded judge template: answer vocabulary, expected blocks and the Jinja sources."""

    spec: TemplateSpec
    body: str
    path: Path | None = None
    _compiled: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def blocks(self) -> tuple[str, ...]:
        return tuple(self.spec.blocks)

    @property
    def needs_type(self) -> bool:
        return "type" in self.spec.blocks

    @property
    def needs_caption(self) -> bool:
        return "caption" in self.spec.blocks

    @property
    def needs_think(self) -> bool:
        return "think" in self.spec.blocks

    @property
    def is_pointwise(self) -> bool:
        return self.spec.kind == "pointwise"

    def type_name(self, task: str) -> str | None:
        """The string the judge should write in ``<type>`` for a record ``task`` (None if unknown)."""
        return self.spec.types.get(task)

    def check_count(self, n: int, rec_id: str = "") -> None:
        """Raise if this template cannot show ``n`` candidates (naming record ``rec_id``)."""
        where = f"record {rec_id}: " if rec_id else ""
        lo, hi = self.spec.candidate_limits()
        if n < lo or (hi is not None and n > hi):
            allowed = f"{lo}" if lo == hi else f"{lo}..{hi if hi is not None else 'any'}"
            raise RmkitError(
                f"{where}template '{self.name}' shows {allowed} candidate(s), asked for {n}",
                hint="pick a template that fits the number of candidates (e.g. 'default' for N-way)",
            )

    def check_task(self, task: str, rec_id: str = "") -> None:
        """Raise if this template is not meant for records of ``task``."""
        if task not in self.spec.tasks:
            raise RmkitError(
                f"record {rec_id}: template '{self.name}' is for {', '.join(self.spec.tasks)}"
                f" records, not {task!r}",
                hint="pick a template for this task (e.g. 'default' handles every task)",
            )

    def answers(self, n: int) -> list[str]:
        """The answer strings for shown positions 1..n (index i is the answer for position i)."""
        if self.is_pointwise:
            return []
        self.check_count(n)
        if isinstance(self.spec.answers, list):
            return list(self.spec.answers[:n])
        return [format_answer(self.spec.answers, i) for i in range(n)]

    def jinja(self, which: Literal["body", "system"]):
        """The compiled Jinja template for the user message body or the system prompt."""
        if which not in self._compiled:
            source = self.body if which == "body" else (self.spec.system or "")
            try:
                self._compiled[which] = _environment().from_string(source)
            except Exception as e:  # jinja2.TemplateSyntaxError and friends
                where = self.path or f"template '{self.name}'"
                raise RmkitError(f"{where}: invalid Jinja in the {which} ({e})") from None
        return self._compiled[which]


def _quote_choices(values: list[str]) -> str:
    quoted = [f'"{v}"' for v in values]
    if len(quoted) <= 2:
        return " or ".join(quoted)
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


@functools.lru_cache(maxsize=1)
def _environment():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,
    )
    env.filters["choices"] = _quote_choices
    return env


def split_front_matter(text: str, source: str) -> tuple[dict[str, Any], str]:
    """Split ``---`` YAML front matter from a template file; return (spec dict, Jinja body)."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise RmkitError(
            f"{source}: a judge template must start with a '---' YAML front matter block",
            hint="see docs/templates.md for the keys (name, answers, blocks, system, ...)",
        )
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            meta = load_yaml("".join(lines[1:i]), source) or {}
            if not isinstance(meta, dict):
                raise RmkitError(f"{source}: the front matter must be a mapping of keys to values")
            return meta, "".join(lines[i + 1 :])
    raise RmkitError(f"{source}: the front matter has no closing '---' line")


def load_template_file(path: str | os.PathLike) -> JudgeTemplate:
    """Read and validate one template file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise RmkitError(f"cannot read judge template {p}: {e.strerror or e}") from None
    meta, body = split_front_matter(text, str(p))
    spec = validate_config(TemplateSpec, meta, source=f"{p} (front matter)")
    if not body.strip():
        raise RmkitError(f"{p}: the template body (the user message) is empty")
    return JudgeTemplate(spec=spec, body=body, path=p)


def builtin_templates() -> list[str]:
    """Names of the templates shipped with rmkit."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja"))


@functools.lru_cache(maxsize=64)
def _load_cached(path: str, mtime_ns: int) -> JudgeTemplate:
    return load_template_file(path)


def get_template(name_or_path: str | os.PathLike | JudgeTemplate) -> JudgeTemplate:
    """A built-in template by name, or a user template file by path (cached per file version)."""
    if isinstance(name_or_path, JudgeTemplate):
        return name_or_path
    key = str(name_or_path)
    candidate = TEMPLATE_DIR / f"{key}.jinja"
    if os.sep not in key and "/" not in key and candidate.is_file():
        path = candidate
    else:
        path = Path(key).expanduser()
        if not path.is_file():
            close = difflib.get_close_matches(key, builtin_templates(), n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else None
            raise RmkitError(
                f"unknown judge template '{key}' (not a built-in name, and no such file)",
                hint=hint or "built-in templates: " + ", ".join(builtin_templates()),
            )
    return _load_cached(str(path.resolve()), path.stat().st_mtime_ns)
