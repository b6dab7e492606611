"""Response bodies of ``rmkit serve``: chat completions (with vLLM's ``token_ids`` /
``prompt_token_ids`` and ``token_id:<id>`` log-prob tokens), streamed ``chat.completion.chunk``
events, and the model list.

Streaming (:class:`ChunkStream`) turns the model worker's events into Server-Sent Events the way
the OpenAI API and vLLM send them: per choice a first chunk with the role (and, with
``return_token_ids``, the prompt's ids), then content deltas (each with the ids it adds), then a
chunk with ``finish_reason``; with ``stream_options.include_usage`` a last chunk with ``usage``
and no choices; then ``data: [DONE]``. Text is released while tokens are generated, but only the
part that cannot change any more (see :class:`LiveText`); what the final sample holds beyond it
comes with the finishing chunk, so the streamed text and ids always equal the non-streamed ones.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

LOGPROB_FLOOR = -9999.0  # vLLM's floor: JSON has no -inf


def dumps(payload: Any) -> bytes:
    return orjson.dumps(payload)


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def _lp(x: float) -> float:
    return max(float(x), LOGPROB_FLOOR)


def token_entry(tokenizer: Any, token_id: int, logprob: float, as_id: bool) -> dict:
    """One logprobs entry; ``as_id`` (vLLM's ``return_tokens_as_token_ids``) shows the token as
    ``"token_id:<id>"``, while ``bytes`` stay those of the decoded token, as in vLLM."""
    text = tokenizer.decode([token_id])
    token = f"token_id:{token_id}" if as_id else text
    return {"token": token, "logprob": _lp(logprob), "bytes": list(text.encode("utf-8", "replace"))}


def logprob_content(
    tokenizer: Any, sample: Any, top: int, as_id: bool, start: int = 0, end: int | None = None
) -> list[dict]:
    """The ``logprobs.content`` entries of ``sample``'s tokens ``start:end``."""
    ids = sample.token_ids[start:end]
    out = []
    for t, (tid, lp) in enumerate(zip(ids, sample.token_logprobs[start:end], strict=False)):
        entry = token_entry(tokenizer, tid, lp, as_id)
        alts = sample.top_logprobs[start + t][:top] if top and sample.top_logprobs else []
        entry["top_logprobs"] = [token_entry(tokenizer, i, v, as_id) for i, v in alts]
        out.append(entry)
    return out


def chat_completion(
    model: str, samples: list[Any], tokenizer: Any, prompt_ids: list[int], opts: Any
) -> dict:
    """A ``chat.completion`` body for the samples of one conversation. ``opts``: the request
    (``logprobs``, ``top_logprobs``, ``return_token_ids``, ``return_tokens_as_token_ids``)."""
    want_lp, as_id = bool(opts.logprobs), bool(opts.return_tokens_as_token_ids)
    choices = []
    for i, s in enumerate(samples):
        choice: dict[str, Any] = {
            "index": i,
            "message": {"role": "assistant", "content": s.text, "refusal": None},
            "logprobs": None,
            "finish_reason": s.finish_reason,
        }
        if want_lp and s.token_logprobs is not None:
            content = logprob_content(tokenizer, s, opts.top_logprobs or 0, as_id)
            choice["logprobs"] = {"content": content, "refusal": None}
        if opts.return_token_ids:
            choice["token_ids"] = list(s.token_ids)
        choices.append(choice)
    body: dict[str, Any] = {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(prompt_ids, samples),
    }
    if opts.return_token_ids:
        body["prompt_token_ids"] = list(prompt_ids)
    return body


def usage(prompt_ids: list[int], samples: list[Any]) -> dict:
    completion = sum(len(s.token_ids) for s in samples)
    return {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": completion,
        "total_tokens": len(prompt_ids) + completion,
    }


def models_list(base: list[str], adapters: list[str], created: int) -> dict:
    cards = [{"id": n, "object": "model", "created": created, "owned_by": "rmkit"} for n in base]
    cards += [
        {"id": a, "object": "model", "created": created, "owned_by": "rmkit", "parent": base[0]}
        for a in adapters
    ]
    return {"object": "list", "data": cards}


# ---------------------------------------------------------------------------- streaming


class LiveText:
    """The text of one choice as its tokens arrive, released only where it is final.

    ``push(token)`` takes the next generated token and returns ``(new text, new token ids)`` that
    are safe to send. Tokens are decoded incrementally (the offsets method of TGI and vLLM: a
    token's text is the decoding of a few tokens before it plus itself, minus that of the few
    before it, so a multi-byte character split over tokens is released whole). A token is held
    back while the model could still stop on a stop string that spans it (the last ``window``
    tokens when stop strings are set: the width of the backend's stop-string check); text is
    held back while it could be the start of a stop string, or ends with a space that the
    tokenizer's space clean-up may still drop. The end-of-turn and pad tokens end the live part; the rest comes
    from the final sample (:meth:`finish`). ``bound``: the final text, when already known.
    """

    def __init__(
        self, tokenizer: Any, stop: tuple[str, ...], end_ids: set[int], bound: str | None = None
    ):
        self.tokenizer, self.stop, self.end_ids, self.bound = tokenizer, stop, end_ids, bound
        self.window = max(len(s) for s in stop) + 8 if stop else 0
        self.hold = max(len(s) for s in stop) - 1 if stop else 0
        self.ids: list[int] = []  # tokens seen, up to the first end token
        self.prefix = self.read = 0  # incremental-decoding offsets into ids
        self.decoded = ""  # text of ids[:read]
        self.sent_ids = 0
        self.text = ""  # text sent
        self.closed = False
        # a tokenizer that cleans up spaces on decode may drop a space before later punctuation
        self.cleanup = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))

    def push(self, token: int) -> tuple[str, list[int]]:
        if self.closed:
            return "", []
        if token in self.end_ids:
            self.closed = True
            return "", []
        self.ids.append(token)
        safe = len(self.ids) - self.window
        if safe <= self.sent_ids:
            return "", []
        new_ids = self.ids[self.sent_ids : safe]
        self.sent_ids = safe
        self._decode_to(safe)
        full = self.decoded
        cut = [full.find(s) for s in self.stop if s in full]
        if cut:
            full, self.closed = full[: min(cut)], True
        elif self.hold:
            full = full[: max(0, len(full) - self.hold)]
        if self.bound is not None:
            full = full[: _common_prefix(full, self.bound)]
        end = len(full.rstrip(" ")) if self.cleanup else len(full)
        if end <= len(self.text) or not full.startswith(self.text):
            return "", new_ids
        delta, self.text = full[len(self.text) : end], full[:end]
        return delta, new_ids

    def _decode_to(self, n: int) -> None:
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix : n], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.decoded += after[len(before) :]
            self.prefix, self.read = self.read, n

    def finish(self, sample: Any) -> tuple[str, list[int]]:
        """What the final sample adds to what was sent: (text, token ids)."""
        text = sample.text[len(self.text) :] if sample.text.startswith(self.text) else ""
        return text, list(sample.token_ids[self.sent_ids :])


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ChunkStream:
    """Builds the SSE lines of one streamed chat completion (see the module docstring)."""

    def __init__(self, model: str, n: int, tokenizer: Any, opts: Any, live: list[LiveText] | None):
        self.model, self.n, self.tokenizer, self.opts = model, n, tokenizer, opts
        self.id, self.created = completion_id(), int(time.time())
        self.live = live  # None: the text comes at the end, token by token (log-probs asked)
        self.include_usage = bool(opts.stream_options and opts.stream_options.include_usage)
        self.continuous = bool(opts.stream_options and opts.stream_options.continuous_usage_stats)
        self.prompt_len = 0
        self.completion_tokens = [0] * n

    def _event(self, choices: list[dict], **extra: Any) -> bytes:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        if self.continuous and "usage" not in extra:
            done = sum(self.completion_tokens)
            body["usage"] = {
                "prompt_tokens": self.prompt_len,
                "completion_tokens": done,
                "total_tokens": self.prompt_len + done,
            }
        return b"data: " + dumps(body) + b"\n\n"

    def _choice(self, i: int, delta: dict, finish: str | None = None, **extra: Any) -> dict:
        return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}

    def start(self, prompt_ids: list[int]) -> list[bytes]:
        self.prompt_len = len(prompt_ids)
        extra = {"prompt_token_ids": list(prompt_ids)} if self.opts.return_token_ids else {}
        delta = {"role": "assistant", "content": ""}
        return [self._event([self._choice(i, dict(delta))], **extra) for i in range(self.n)]

    def tokens(self, choice: int, token: int) -> list[bytes]:
        if self.live is None:
            return []
        text, ids = self.live[choice].push(token)
        if not text and not (ids and self.opts.return_token_ids):
            return []
        self.completion_tokens[choice] += len(ids)
        extra = {"token_ids": ids} if self.opts.return_token_ids else {}
        return [self._event([self._choice(choice, {"content": text}, **extra)])]

    def finish(self, samples: list[Any]) -> list[bytes]:
        out = []
        for i, s in enumerate(samples):
            if self.live is not None:
                text, ids = self.live[i].finish(s)
                out += self._last(i, s, text, ids, None)
            else:
                out += self._by_token(i, s)
        if self.include_usage:
            out.append(self._event([], usage=usage([0] * self.prompt_len, samples)))
        return out

    def _last(self, i: int, s: Any, text: str, ids: list[int], logprobs: Any) -> list[bytes]:
        self.completion_tokens[i] += len(ids)
        extra = {"token_ids": ids} if self.opts.return_token_ids else {}
        choice = self._choice(i, {"content": text}, s.finish_reason, **extra)
        choice["logprobs"] = logprobs
        return [self._event([choice])]

    def _by_token(self, i: int, s: Any) -> list[bytes]:
        """A finished sample sent one token per chunk (with its log-probs when asked)."""
        want_lp = bool(self.opts.logprobs) and s.token_logprobs is not None
        top, as_id = self.opts.top_logprobs or 0, bool(self.opts.return_tokens_as_token_ids)
        live = LiveText(self.tokenizer, (), set(), bound=s.text)
        out, n = [], len(s.token_ids)
        if n == 0:
            return self._last(i, s, s.text, [], None)
        for t in range(n):
            lp = None
            if want_lp:
                lp = {"content": logprob_content(self.tokenizer, s, top, as_id, t, t + 1)}
            ids = [s.token_ids[t]]
            if t == n - 1:
                out += self._last(i, s, live.finish(s)[0], ids, lp)
                break
            text, _ = live.push(s.token_ids[t])
            self.completion_tokens[i] += 1
            extra = {"token_ids": ids} if self.opts.return_token_ids else {}
            choice = self._choice(i, {"content": text}, **extra)
            choice["logprobs"] = lp
            out.append(self._event([choice]))
        return out

    @staticmethod
    def error_event(body: dict) -> bytes:
        return b"data: " + dumps(body) + b"\n\n"

    @staticmethod
    def done() -> bytes:
        return b"data: [DONE]\n\n"
