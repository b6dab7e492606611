"""The chat-completions wire format used by :class:`rmkit.generation.openai_api.OpenAIBackend`:
the request body for one sample, and the parsing of an answer into a
:class:`~rmkit.generation.base.Completion`.

Pure functions (no I/O, no client), so the format can be tested without a server.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from rmkit.generation.base import Completion, SamplingParams
from rmkit.generation.media import to_openai_messages
from rmkit.generation.retry import MALFORMED

log = logging.getLogger(__name__)


class Malformed(ValueError):
    """An HTTP 200 answer that is not a chat completion (worth retrying)."""


class Retryable(Exception):
    """One failed attempt that is worth retrying (``kind``: a :mod:`.retry` failure kind)."""

    def __init__(self, kind: str, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.kind, self.detail, self.retry_after = kind, detail, retry_after


def request_body(
    model: str,
    conversation: list[dict],
    params: SamplingParams,
    index: int,
    max_tokens_field: str = "max_tokens",
    explicit_sampling: bool = False,
) -> dict[str, Any]:
    """The chat-completions JSON for sample ``index`` of ``conversation`` (images as data URLs).

    ``top_p`` is sent only for sampled requests below 1; ``seed`` is ``params.seed + index``.
    ``top_k`` and ``repetition_penalty`` are not OpenAI fields but vLLM's (also rmkit serve's
    and SGLang's), sent at the top level of the body (what the SDK's ``extra_body`` does) by
    :func:`sampling_extras`: see there for when.

    >>> request_body("m", [{"role": "user", "content": "hi"}], SamplingParams(seed=3), 1)
    ... # doctest: +NORMALIZE_WHITESPACE
    {'model': 'm', 'messages': [{'role': 'user', 'content': 'hi'}], 'temperature': 1.0,
     'max_tokens': 256, 'seed': 4}
    """
    return {
        "model": model,
        "messages": to_openai_messages(conversation),
        **_sampling_fields(params, index, max_tokens_field, explicit_sampling),
    }


def encode_messages(conversation: list[dict]) -> bytes:
    """The ``messages`` JSON of ``conversation`` (images read and base64-encoded), built once
    and shared by the requests of its samples (see :func:`request_bytes`)."""
    return orjson.dumps(to_openai_messages(conversation))


def request_bytes(
    model: str,
    messages_json: bytes,
    params: SamplingParams,
    index: int,
    max_tokens_field: str = "max_tokens",
    explicit_sampling: bool = False,
) -> bytes:
    """:func:`request_body` serialised, from messages already encoded by
    :func:`encode_messages` (the same JSON object, without encoding the images again).

    >>> request_bytes("m", encode_messages([{"role": "user", "content": "hi"}]),
    ...               SamplingParams(temperature=0), 0)
    b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":256}'
    """
    rest = orjson.dumps(_sampling_fields(params, index, max_tokens_field, explicit_sampling))
    return b'{"model":' + orjson.dumps(model) + b',"messages":' + messages_json + b"," + rest[1:]


def sampling_extras(params: SamplingParams, explicit: bool) -> dict[str, Any]:
    """``top_k`` and ``repetition_penalty`` for a request body (vLLM's sampling fields).

    ``explicit`` (a server known to take them: one rmkit launched, vLLM or rmkit serve, or a
    section with ``explicit_sampling: true``): both are always sent, neutral values included
    (``top_k: -1`` is "off" for every vLLM version and rmkit serve), so a vLLM server's
    defaults from the model's ``generation_config.json`` (vLLM's ``--generation-config auto``)
    do not apply. Otherwise (any OpenAI-compatible endpoint): only values the caller set away
    from neutral are sent, so a plain OpenAI endpoint never sees a field it would reject
    unless the recipe asks for one (then it fails loudly instead of sampling without it).
    ``top_k`` is left out of greedy requests (it cannot change them).

    >>> sampling_extras(SamplingParams(), False)
    {}
    >>> sampling_extras(SamplingParams(), True)
    {'top_k': -1, 'repetition_penalty': 1.0}
    >>> sampling_extras(SamplingParams(top_k=50, repetition_penalty=1.05), False)
    {'top_k': 50, 'repetition_penalty': 1.05}
    """
    out: dict[str, Any] = {}
    if not params.greedy and (explicit or params.top_k > 0):
        out["top_k"] = params.top_k if params.top_k > 0 else -1
    if explicit or params.repetition_penalty != 1.0:
        out["repetition_penalty"] = float(params.repetition_penalty)
    return out


def _sampling_fields(
    params: SamplingParams, index: int, max_tokens_field: str, explicit: bool = False
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "temperature": params.temperature,
        max_tokens_field: params.max_new_tokens,
    }
    if not params.greedy and params.top_p < 1.0:
        fields["top_p"] = params.top_p
    fields.update(sampling_extras(params, explicit))
    if params.seed is not None:
        fields["seed"] = params.seed + index
    if params.logprobs:
        fields["logprobs"] = True
    if params.stop:
        fields["stop"] = list(params.stop)
    return fields


def parse_completion(data: Any, logprobs: bool) -> Completion:
    """A Completion from a ``chat.completion`` JSON object.

    ``text`` may be empty (the caller decides whether to retry); ``n_tokens`` is the server's
    ``usage.completion_tokens``, else the number of returned token log-probabilities;
    ``mean_logprob`` is set only when ``logprobs`` was asked for and the server sent some;
    a ``finish_reason`` other than "length" reads as "stop". Raises :class:`Malformed` when
    there is no ``choices[0].message.content`` string (``null`` content counts as empty).
    """
    try:
        choice = data["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise Malformed("answer has no choices[0].message.content") from None
    if text is None:
        text = ""
    if not isinstance(text, str) or not isinstance(choice, dict):
        raise Malformed("answer content is not a string")
    lp_items = (choice.get("logprobs") or {}).get("content") or []
    lps = [
        float(t["logprob"])
        for t in lp_items
        if isinstance(t, dict) and t.get("logprob") is not None
    ]
    usage = data.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    prompt_tokens = _count(usage.get("prompt_tokens"))
    completion_tokens = _count(usage.get("completion_tokens"))
    mean_lp = sum(lps) / len(lps) if logprobs and lps else None
    if logprobs and mean_lp is None:
        log.debug("logprobs requested but the server returned none")
    return Completion(
        text=text,
        n_tokens=completion_tokens if completion_tokens else len(lps),
        mean_logprob=mean_lp,
        finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def decode_answer(raw: bytes, logprobs: bool) -> Completion:
    """:func:`parse_completion` of a raw answer body; raises :class:`Retryable` ("malformed")
    when it is not JSON or not a chat completion."""
    try:
        return parse_completion(orjson.loads(raw), logprobs)
    except orjson.JSONDecodeError:
        raise Retryable(MALFORMED, "answer is not valid JSON") from None
    except Malformed as e:
        raise Retryable(MALFORMED, str(e)) from None


def _count(x: Any) -> int | None:
    """A token count from a usage report (None when absent or not a number)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return int(x)


def server_message(e: Any) -> str:
    """The server's own error message from an openai ``APIStatusError`` (body or text)."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:500]
        if isinstance(inner, str):
            return inner[:500]
    return str(getattr(e, "message", e))[:500]
