"""Pydantic base model and the error translation that makes config mistakes fixable.

Unknown keys are rejected and the closest valid key is suggested; every message names the
dotted path of the bad field. A section's own cross-field rules raise :func:`field_rule`, whose
field names get the section's dotted path (``judge.base_url needs judge.api_model``), so one
model can serve several sections and still name the right keys.
"""

from __future__ import annotations

import difflib
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from rmkit.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignment is validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def field_rule(template: str, *fields: str) -> PydanticCustomError:
    """The error a section's model validator raises when a rule across its fields is broken.

    ``template`` names the fields as ``{field}`` placeholders, e.g. ``"{base_url} needs
    {api_model}"``; :func:`format_validation_error` writes each one as its full dotted path (a
    section validated on its own keeps the bare names). No other braces in ``template``.
    """
    return PydanticCustomError("field_rule", template, {"rule": template, **{f: f for f in fields}})


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid field names of the (sub)model a validation error location points into."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        current = _unwrap_model(ann)
        if current is None:
            return []
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def _unwrap_model(ann: Any) -> Any:
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def format_validation_error(
    err: ValidationError, model: type[BaseModel], source: str, at: str = ""
) -> ConfigError:
    """One :class:`ConfigError` for every problem in ``err``; ``at`` is the dotted path of the
    validated data inside a larger config (e.g. "options"), put in front of every key named."""
    lines = []
    hint = None
    prefix = tuple(at.split(".")) if at else ()
    for e in err.errors():
        loc = tuple(e["loc"])
        # Discriminated unions add the tag as a path element; drop non-field parts.
        dotted = ".".join(str(p) for p in prefix + loc) or "<root>"
        if e["type"] == "field_rule":
            ctx = e.get("ctx") or {}
            names = {k: ".".join(str(p) for p in (*prefix, *loc, k)) for k in ctx if k != "rule"}
            lines.append(ctx["rule"].format(**names))
        elif e["type"] == "extra_forbidden":
            valid = _fields_at(model, loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            msg = f"unknown key '{dotted}'"
            if close:
                near = ".".join(str(p) for p in prefix + loc[:-1] + (close[0],))
                msg += f"; did you mean '{near}'?"
                hint = hint or f"rename '{loc[-1]}' to '{close[0]}'"
            elif valid:
                hint = hint or "valid keys here: " + ", ".join(valid)
            lines.append(msg)
        elif e["type"] == "missing":
            lines.append(f"missing required key '{dotted}'")
        else:
            got = e.get("input")
            got_s = repr(got) if not isinstance(got, dict) else "a mapping"
            if len(got_s) > 60:
                got_s = got_s[:57] + "..."
            lines.append(f"'{dotted}': {e['msg']} (got {got_s})")
    return ConfigError(f"{source}: " + "; ".join(lines), hint=hint)


def validate_config(
    model: type[M], data: dict[str, Any], source: str = "config", at: str = ""
) -> M:
    """Validate ``data`` against ``model``; raise :class:`ConfigError` with fixable messages
    (``at``: where ``data`` sits in a larger config, e.g. "options", for the keys they name)."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise format_validation_error(err, model, source, at) from None
