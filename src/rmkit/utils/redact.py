"""Credentials out of what rmkit saves and prints: URLs with userinfo or secret-looking query
values are redacted before a config is saved, a dry-run printed or an error raised."""

from __future__ import annotations

from typing import Any

SECRET_QUERY_KEYS = ("key", "token", "secret", "password", "passwd", "signature", "sig", "auth")


def redact_url(url: str) -> str:
    """``url`` with its userinfo (``user:pass@``) and secret-looking query values (``api-key``,
    ``api_key``, ``token``, ``sig``, ...) replaced by ``***``; other text is returned as is.

    >>> redact_url("http://alice:pw@host:8000/v1?api-key=S&x=1")
    'http://***@host:8000/v1?api-key=***&x=1'
    """
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        secret = [
            (k, "***" if any(w in k.lower().replace("-", "_") for w in SECRET_QUERY_KEYS) else v)
            for k, v in pairs
        ]
        query = urlencode(secret, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_secrets(data: Any) -> Any:
    """A copy of a JSON-like config with every URL string passed through :func:`redact_url`
    (for saved configs and summaries; the running config keeps the real URL)."""
    if isinstance(data, dict):
        return {k: redact_secrets(v) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_secrets(v) for v in data]
    if isinstance(data, str) and "://" in data:
        return redact_url(data)
    return data
