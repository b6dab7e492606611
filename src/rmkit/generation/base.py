"""The generation interface every backend implements, and the content-keyed completion cache.

A backend turns chat conversations (rmkit's message convention, see ``docs/architecture.md``)
into ``n`` completions each. Two backends exist: :class:`rmkit.generation.hf.HFBackend` (local,
batched) and :class:`rmkit.generation.openai_api.OpenAIBackend` (any OpenAI-compatible server).

The cache keys a single sample by the SHA-256 of the canonical JSON of everything that decides
it: the model name, the messages (each image replaced by the SHA-256 of its *bytes*, so moving a
dataset folder does not invalidate the cache and editing an image does), the sampling parameters
except ``n``, and the sample index. Entries live in an append-only JSONL file; each line is
written with one ``write`` call on an ``O_APPEND`` descriptor, so a SIGKILL loses at most the
line being written, and a torn last line is skipped when the file is loaded again. Each entry
also records the token usage the server reported for it, so a rerun that is answered from the
cache can still account for what those answers cost.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import orjson

from rmkit.errors import RmkitError

log = logging.getLogger(__name__)

FINISH_REASONS = ("stop", "length", "error", "empty")
CACHE_FILE = "completions.jsonl"


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` means greedy decoding (``top_p`` and ``top_k`` are
    then ignored; ``repetition_penalty`` still applies, as in Hugging Face ``generate``).

    ``top_k`` keeps the ``k`` most likely tokens (0: off). ``repetition_penalty`` divides the
    positive logits and multiplies the negative ones of every token already in the prompt or
    the completion (Hugging Face's and vLLM's rule; 1.0: off). Both defaults are explicit
    values, not "whatever the model ships": a checkpoint whose ``generation_config.json`` sets
    ``repetition_penalty: 1.05`` or ``top_k: 20`` is sampled *without* them unless asked
    (the local backend sets every field; server backends send them where the server takes
    them, see :mod:`rmkit.generation.openai_wire`). Order, as Hugging Face applies them:
    repetition penalty, temperature, top-k, top-p.

    ``seed`` makes sampling repeatable: the local backend seeds torch with it, the API backend
    sends ``seed + sample_index`` with each of the ``n`` requests. ``logprobs`` asks for the mean
    token log-probability of each completion. ``stop`` lists extra stop strings (the chat
    template's end-of-turn token always stops generation).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None
    logprobs: bool = False
    stop: tuple[str, ...] = field(default_factory=tuple)
    top_k: int = 0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.stop, (list, str)):
            object.__setattr__(
                self, "stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
            )
        checks = [
            ("n", isinstance(self.n, int) and self.n >= 1, "an integer >= 1"),
            ("temperature", _num(self.temperature) and self.temperature >= 0, "a number >= 0"),
            ("top_p", _num(self.top_p) and 0 < self.top_p <= 1, "a number in (0, 1]"),
            (
                "top_k",
                isinstance(self.top_k, int)
                and not isinstance(self.top_k, bool)
                and self.top_k >= 0,
                "an integer >= 0 (0: off)",
            ),
            (
                "repetition_penalty",
                _num(self.repetition_penalty)
                and math.isfinite(self.repetition_penalty)
                and self.repetition_penalty > 0,
                "a number > 0 (1.0: off)",
            ),
            (
                "max_new_tokens",
                isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
                "an integer >= 1",
            ),
            (
                "seed",
                self.seed is None
                or (isinstance(self.seed, int) and not isinstance(self.seed, bool)),
                "an integer or None",
            ),
            (
                "stop",
                all(isinstance(s, str) and s for s in self.stop),
                "a list of non-empty strings",
            ),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise RmkitError(
                    f"sampling parameter '{name}' must be {expected} (got {getattr(self, name)!r})",
                    hint="fix the generation settings in the recipe or the call",
                )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def key_fields(self) -> dict[str, Any]:
        """The fields that decide one sample (everything except ``n``), for cache keys."""
        d = dict(self._key_fields())
        d["stop"] = list(self.stop)
        return d

    def _key_fields(self) -> dict[str, Any]:
        """:meth:`key_fields`, computed once per instance (read-only: shared by every key)."""
        memo = self.__dict__.get("_key_memo")
        if memo is None:
            memo = asdict(self)
            memo.pop("n")
            memo["stop"] = list(self.stop)
            if self.greedy:  # top_p, top_k and seed do not change a greedy completion
                memo["top_p"] = 1.0
                memo["seed"] = None
                memo["top_k"] = 0
            # neutral values stay out of the key, so caches written before these fields
            # existed (which sampled without them) still answer
            if memo["top_k"] == 0:
                memo.pop("top_k")
            if memo["repetition_penalty"] == 1.0:
                memo.pop("repetition_penalty")
            object.__setattr__(self, "_key_memo", memo)  # frozen: bypass __setattr__
        return memo


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass
class Completion:
    """One generated answer.

    ``n_tokens`` counts the generated tokens (including the end-of-turn token when the model
    stopped on it); ``mean_logprob`` is the mean log-probability of those tokens (None unless
    requested); ``finish_reason`` is "stop" (end of turn or a stop string), "length"
    (``max_new_tokens`` reached), "error" (the request failed and the caller asked to skip
    failures) or "empty" (an API answered a greedy request with empty content again after a
    retry: kept as the answer, since a temperature-0 answer does not change);
    ``token_ids`` are the generated ids when the backend knows them (local, and a server
    asked for them: :mod:`rmkit.generation.token_server`).

    For RL a backend also reports, when it can: ``token_logprobs`` (one per token id: the
    log-softmax of the model's raw logits at temperature 1, before top-p - the behaviour
    log-probs, as vLLM's default ``raw_logprobs`` and rmkit's local backend record them),
    ``prompt_token_ids`` (the prompt exactly as the model saw it) and ``policy_version`` (which
    weights produced it: the RL step whose adapter the server had loaded; None when unknown).

    API backends also fill ``prompt_tokens`` / ``completion_tokens`` (the server's usage report
    for the request that produced this answer; None when it sent none) and set ``cached`` when
    the answer came without a request in this call (from the request cache, or shared with an
    identical request of the same call); its usage fields then say what it cost when first paid.
    """

    text: str
    n_tokens: int
    mean_logprob: float | None
    finish_reason: str
    token_ids: list[int] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached: bool = False
    token_logprobs: list[float] | None = None
    prompt_token_ids: list[int] | None = None
    policy_version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "n_tokens": self.n_tokens,
            "mean_logprob": self.mean_logprob,
            "finish_reason": self.finish_reason,
            "token_ids": self.token_ids,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached": self.cached,
            "token_logprobs": self.token_logprobs,
            "prompt_token_ids": self.prompt_token_ids,
            "policy_version": self.policy_version,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Completion:
        return cls(
            text=d["text"],
            n_tokens=int(d["n_tokens"]),
            mean_logprob=d.get("mean_logprob"),
            finish_reason=d["finish_reason"],
            token_ids=d.get("token_ids"),
            prompt_tokens=_opt_int(d.get("prompt_tokens")),
            completion_tokens=_opt_int(d.get("completion_tokens")),
            cached=bool(d.get("cached", False)),
            token_logprobs=d.get("token_logprobs"),
            prompt_token_ids=d.get("prompt_token_ids"),
            policy_version=_opt_int(d.get("policy_version")),
        )


def _opt_int(x: Any) -> int | None:
    return None if x is None else int(x)


@runtime_checkable
class Backend(Protocol):
    """What every generation backend offers.

    ``generate`` returns, for each conversation in order, a list of ``params.n`` completions.
    ``stats`` is a dict of counters (backend-specific: calls, tokens, cache hits, timings).
    """

    stats: dict[str, Any]

    def generate(
        self, conversations: list[list[dict]], params: SamplingParams
    ) -> list[list[Completion]]: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------- cache keys


def parse_data_url(url: str) -> tuple[str, bytes]:
    """Split a ``data:<mime>;base64,<payload>`` URL into ``(mime, bytes)``."""
    head, sep, payload = url.partition(",")
    if not url.startswith("data:") or not sep or not head.endswith(";base64"):
        raise RmkitError(
            f"not a base64 data URL: {url[:40]!r}...",
            hint="images must be sent as data:<mime>;base64,<payload>",
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RmkitError(
            f"data URL payload is not valid base64 ({e})", hint="re-encode the image"
        ) from None
    return head[5:-7] or "application/octet-stream", data


def image_digest(ref: str) -> str:
    """SHA-256 of an image's content: a file path is read, a data URL decoded; other URLs
    (``http(s)://``) are hashed as their text because their bytes are not ours to read."""
    if ref.startswith("data:"):
        return hashlib.sha256(parse_data_url(ref)[1]).hexdigest()
    if ref.startswith(("http://", "https://")):
        return "url:" + hashlib.sha256(ref.encode()).hexdigest()
    h = hashlib.sha256()
    try:
        with open(ref, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise RmkitError(
            f"image not readable: {ref} ({e.strerror})",
            hint="image parts must hold absolute paths (resolve them against the dataset folder)",
        ) from None
    return h.hexdigest()


def canonical_messages(messages: list[dict], memo: dict[str, str] | None = None) -> list[dict]:
    """Messages with each image part replaced by ``{"type": "image", "sha256": ...}``.

    Accepts rmkit image parts (``{"type": "image", "image": ref}``) and OpenAI ones
    (``{"type": "image_url", "image_url": {"url": ref}}``); ``memo`` caches digests by reference.
    """
    memo = {} if memo is None else memo
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for p in content:
                ref = _image_ref(p)
                if ref is None:
                    parts.append(p)
                    continue
                if ref not in memo:
                    memo[ref] = image_digest(ref)
                parts.append({"type": "image", "sha256": memo[ref]})
            content = parts
        out.append({"role": m.get("role"), "content": content})
    return out


def _image_ref(part: Any) -> str | None:
    if not isinstance(part, dict):
        return None
    if part.get("type") == "image":
        return part.get("image")
    if part.get("type") == "image_url":
        iu = part.get("image_url")
        return iu.get("url") if isinstance(iu, dict) else iu
    return None


def request_key(
    model: str, canonical: list[dict], params: SamplingParams, sample_index: int
) -> str:
    """SHA-256 hex of the canonical JSON of one sample's request (see the module docstring).

    ``canonical`` must come from :func:`canonical_messages` (images already hashed).
    """
    payload = {
        "model": model,
        "messages": canonical,
        "params": params._key_fields(),
        "sample": sample_index,
    }
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


# ----------------------------------------------------------------------------- the cache file


class CompletionCache:
    """Append-only JSONL store of completions by request key (thread-safe).

    Each line is ``{"key": ..., "completion": {text, n_tokens, mean_logprob, finish_reason,
    token_ids}, "usage": {"prompt_tokens": ..., "completion_tokens": ...}, "time": ...}``
    (``usage`` holds the server's report for the request; lines written before it existed have
    none and load with unknown usage). Nothing else is stored: no prompts, no credentials.
    Later lines win when a key repeats.
    """

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: dict[str, Completion] = {}
        self.skipped_lines = self._load()
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if self._needs_newline():
            os.write(self._fd, b"\n")  # seal a torn last line so the next entry starts clean

    def _load(self) -> int:
        if not self.path.exists():
            return 0
        bad = 0
        for line in self.path.read_bytes().split(b"\n"):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
                comp = row["completion"]
                usage = row.get("usage") or {}
                self._entries[row["key"]] = Completion(
                    text=comp["text"],
                    n_tokens=int(comp["n_tokens"]),
                    mean_logprob=comp.get("mean_logprob"),
                    finish_reason=comp["finish_reason"],
                    token_ids=comp.get("token_ids"),
                    prompt_tokens=_opt_int(usage.get("prompt_tokens")),
                    completion_tokens=_opt_int(usage.get("completion_tokens")),
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                bad += 1
        if bad:
            log.warning(
                "%s: skipped %d unreadable line(s) (a run was killed mid-write)", self.path, bad
            )
        log.debug("%s: %d cached completion(s)", self.path, len(self._entries))
        return bad

    def _needs_newline(self) -> bool:
        size = self.path.stat().st_size
        if size == 0:
            return False
        with open(self.path, "rb") as fh:
            fh.seek(size - 1)
            return fh.read(1) != b"\n"

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> Completion | None:
        """The stored completion for ``key`` (its ``cached`` flag is False), or None."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, completion: Completion) -> None:
        """Store and persist one completion (one unbuffered append; survives SIGKILL)."""
        c = completion
        row = {
            "key": key,
            "completion": {
                "text": c.text,
                "n_tokens": c.n_tokens,
                "mean_logprob": c.mean_logprob,
                "finish_reason": c.finish_reason,
                "token_ids": c.token_ids,
            },
            "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens},
            "time": round(time.time(), 3),
        }
        line = orjson.dumps(row)
        if c.cached:
            completion = replace(c, cached=False)
        with self._lock:
            if self._fd is None:
                raise RmkitError(f"{self.path}: cache already closed")
            os.write(self._fd, line + b"\n")
            self._entries[key] = completion

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
