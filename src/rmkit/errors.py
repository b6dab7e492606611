"""The one exception type users see.

Every error that is the user's to fix (bad input, bad config, missing file, offline hub) is an
:class:`RmkitError` with a one-line message and an optional hint. The CLI's error funnel prints
them as two short lines and exits with code 1; ``RMKIT_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations


class RmkitError(Exception):
    """A user-facing error: ``message`` says what is wrong, ``hint`` how to fix it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class DataError(RmkitError):
    """A malformed input row: names the file, line and field."""

    def __init__(
        self, path: str, line: int | None, field: str | None, expected: str, hint: str | None = None
    ):
        where = str(path) + (f":{line}" if line is not None else "")
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{expected}", hint)
        self.path = str(path)
        self.line = line
        self.field = field
        self.expected = expected


class ConfigError(RmkitError):
    """An invalid recipe or override."""
