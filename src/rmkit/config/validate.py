"""Pydantic base model and the error translation that makes config mistakes fixable.

Unknown keys are rejected and the closest valid key is suggested; every message names the
dotted path of the bad field.
"""

from __future__ import annotations

import difflib
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from rmkit.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignment is validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


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
    err: ValidationError, model: type[BaseModel], source: str
) -> ConfigError:
    lines = []
    hint = None
    for e in err.errors():
        loc = tuple(e["loc"])
        # Discriminated unions add the tag as a path element; drop non-field parts.
        dotted = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            valid = _fields_at(model, loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            msg = f"unknown key '{dotted}'"
            if close:
                msg += f"; did you mean '{'.'.join(str(p) for p in loc[:-1] + (close[0],))}'?"
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


def validate_config(model: type[M], data: dict[str, Any], source: str = "config") -> M:
    """Validate ``data`` against ``model``; raise :class:`ConfigError` with fixable messages."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise format_validation_error(err, model, source) from None
