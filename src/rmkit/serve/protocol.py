"""Request models of ``rmkit serve`` (OpenAI wire format plus vLLM's extensions) and their
conversion to rmkit messages and sampling parameters.

Every body is validated by a pydantic model before anything else runs (strict types: ``"5"`` is
not a number, ``"yes"`` is not a boolean; NaN and infinities are refused; unknown fields are
ignored, as the OpenAI API does). A bad field becomes an :class:`ApiError` 400 whose ``param`` is
the field's path (``messages[0].content``), via :func:`validation_error`. Checks that need more
than one field (``top_logprobs`` without ``logprobs``, the per-request output budget, image
limits) raise :class:`ApiError` during conversion.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import io
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rmkit.errors import RmkitError
from rmkit.generation.base import SamplingParams, parse_data_url
from rmkit.generation.media import extension_for, sniff_mime

DEFAULT_MAX_TOKENS = 256
# Default per-request limits (each configurable: :class:`Limits`, the ``rmkit serve`` flags)
MAX_TOKENS = 4096  # largest max_tokens a request may ask for
MAX_N = 64
MAX_TOP_LOGPROBS = 20
MAX_STOP = 4  # fixed
MAX_LOGPROB_ENTRIES = 262_144  # n * max_tokens * (1 + top_logprobs), when top_logprobs > 0
MAX_IMAGES = 8  # per request
MAX_IMAGE_PIXELS = 4096 * 4096  # per image, read from the header before decoding
MAX_REQUEST_PIXELS = 2 * MAX_IMAGE_PIXELS
MAX_CANDIDATES = 16
CANDIDATES_CEILING = 26  # the judge templates label at most 26 positions (A..Z)
TASKS = (
    "text",
    "image_understanding",
    "image_generation",
    "video_understanding",
    "video_generation",
)


class ApiError(Exception):
    """An error answered to the client: HTTP ``status`` and an OpenAI error object."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(
    message: str, kind: str = "invalid_request_error", param: str | None = None, code: Any = None
) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param, code=code)


# ---------------------------------------------------------------------------- limits


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-request limits of ``rmkit serve``, all checked before any model work.

    Each field has an ``rmkit serve`` flag of the same name (``max_tokens`` ->
    ``--max-tokens-limit``, ``max_prompt_tokens`` -> ``--max-prompt-tokens``, ...; see
    docs/serving.md, "Limits"). ``max_prompt_tokens`` None means the model's context; the
    model's context always applies too (prompt plus ``max_tokens`` must fit it).
    """

    max_tokens: int = MAX_TOKENS
    max_n: int = MAX_N
    max_top_logprobs: int = MAX_TOP_LOGPROBS
    max_logprob_entries: int = MAX_LOGPROB_ENTRIES
    max_images: int = MAX_IMAGES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_request_pixels: int = MAX_REQUEST_PIXELS
    max_candidates: int = MAX_CANDIDATES
    max_prompt_tokens: int | None = None

    FLAGS = {
        "max_tokens": "--max-tokens-limit",
        "max_n": "--max-n",
        "max_top_logprobs": "--max-top-logprobs",
        "max_logprob_entries": "--max-logprob-entries",
        "max_images": "--max-images",
        "max_image_pixels": "--max-image-pixels",
        "max_request_pixels": "--max-request-pixels",
        "max_candidates": "--max-candidates",
        "max_prompt_tokens": "--max-prompt-tokens",
    }

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "max_prompt_tokens" and value is None:
                continue
            low = 0 if f.name == "max_top_logprobs" else 2 if f.name == "max_candidates" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise RmkitError(f"{self.FLAGS[f.name]} must be an integer >= {low} (got {value})")
        if self.max_candidates > CANDIDATES_CEILING:
            raise RmkitError(
                f"--max-candidates must be at most {CANDIDATES_CEILING} (the judge templates "
                f"label positions A..Z; got {self.max_candidates})"
            )

    def flag(self, name: str) -> str:
        return self.FLAGS[name]

    def over(self, name: str, what: str) -> str:
        """The message for a request over the limit ``name``: names the limit and its flag."""
        return (
            f"{what}; this server's limit is {name} = {getattr(self, name):,} "
            f"(rmkit serve {self.FLAGS[name]})"
        )


_DEFAULT_LIMITS = Limits()
_LIMITS: contextvars.ContextVar[Limits | None] = contextvars.ContextVar(
    "rmkit_serve_limits", default=None
)


def current_limits() -> Limits:
    """The limits of the request being handled (set by the app's guard; defaults otherwise)."""
    return _LIMITS.get() or _DEFAULT_LIMITS


@contextlib.contextmanager
def using_limits(limits: Limits) -> Iterator[Limits]:
    token = _LIMITS.set(limits)
    try:
        yield limits
    finally:
        _LIMITS.reset(token)


def _at_most(name: str, value: int | None, field: str, unit: str = "") -> int | None:
    limits = current_limits()
    if value is not None and value > getattr(limits, name):
        raise ValueError(limits.over(name, f"{field} {value:,}{unit} is over the limit"))
    return value


# ---------------------------------------------------------------------------- request models


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class ImageURL(_Strict):
    url: str
    detail: str | None = None


class ContentPart(_Strict):
    """``{"type": "text", "text"}``, ``{"type": "image_url", "image_url": {"url"}}`` or
    rmkit's ``{"type": "image", "image": <data URL>}``."""

    type: Literal["text", "image_url", "image"]
    text: str | None = None
    image_url: ImageURL | str | None = None
    image: str | None = None

    @model_validator(mode="after")
    def _needs_its_field(self) -> ContentPart:
        field = {"text": "text", "image_url": "image_url", "image": "image"}[self.type]
        if getattr(self, field) is None:
            raise ValueError(f"a '{self.type}' part needs the field '{field}'")
        return self


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart]


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False


StopString = Annotated[str, Field(min_length=1)]

# Known OpenAI/vLLM fields rmkit serve does not implement: accepted only at their neutral value,
# so a request that relies on one fails loudly instead of being answered without it.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "min_p": (None, 0, 0.0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "echo": (None, False),
    "use_beam_search": (None, False),
    "best_of": (None, 1),
    "prompt_logprobs": (None, 0),
}


class ChatCompletionRequest(_Strict):
    """``POST /v1/chat/completions`` (see docs/serving.md for each field)."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = Field(1, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    # vLLM's sampling fields: top_k -1 or 0 = off; repetition_penalty 1 = off, in (0, 2] as in
    # vLLM. Unset means off - never the model's generation_config.json values.
    top_k: int | None = Field(None, ge=-1)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: StopString | list[StopString] | None = Field(None, max_length=MAX_STOP)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # vLLM extensions
    return_token_ids: bool | None = False
    return_tokens_as_token_ids: bool | None = False

    # the configurable limits (current_limits()): a 400 whose param names the field
    @field_validator("n")
    @classmethod
    def _limit_n(cls, v: int) -> int:
        return _at_most("max_n", v, "n")

    @field_validator("top_logprobs")
    @classmethod
    def _limit_top(cls, v: int | None) -> int | None:
        return _at_most("max_top_logprobs", v, "top_logprobs")

    @field_validator("max_tokens", "max_completion_tokens")
    @classmethod
    def _limit_max_tokens(cls, v: int | None) -> int | None:
        return _at_most("max_tokens", v, "max_tokens")

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, neutral in _NEUTRAL.items():
                if name in data and not any(
                    data[name] == v and type(data[name]) is type(v) for v in neutral
                ):
                    raise ApiError(
                        400, f"'{name}' is not supported by rmkit serve (leave it unset)", name
                    )
        return data


class ScoreRequest(_Strict):
    """``POST /v1/score``: verdict probabilities from the model used as a judge."""

    model: str | None = None
    prompt: str | list[ChatMessage]
    candidates: list[str] = Field(min_length=2)
    images: list[str] = Field(default_factory=list)
    task: Literal[TASKS] | None = None  # type: ignore[valid-type]
    template: str = "default"
    order: list[int] | None = None
    reasoning: bool = False
    max_reasoning_tokens: int = Field(256, ge=1)

    @field_validator("candidates")
    @classmethod
    def _limit_candidates(cls, v: list[str]) -> list[str]:
        _at_most("max_candidates", len(v), "a list of", " candidates")
        return v

    @field_validator("images")
    @classmethod
    def _limit_images(cls, v: list[str]) -> list[str]:
        _at_most("max_images", len(v), "a list of", " images")
        return v

    @field_validator("max_reasoning_tokens")
    @classmethod
    def _limit_reasoning(cls, v: int) -> int:
        return _at_most("max_tokens", v, "max_reasoning_tokens")


class LoadLoraRequest(_Strict):
    """``POST /v1/load_lora_adapter`` (vLLM's body)."""

    lora_name: str = Field(min_length=1, max_length=200)
    lora_path: str = Field(min_length=1, max_length=4096)
    load_inplace: bool = False


class ReloadKwargs(_Strict):
    weights_path: str = Field(min_length=1, max_length=4096)


class CollectiveRpcRequest(_Strict):
    """``POST /collective_rpc`` (vLLM's development endpoint): only ``reload_weights``."""

    method: Literal["reload_weights"]
    kwargs: ReloadKwargs
    timeout: float | None = None


class UnloadLoraRequest(_Strict):
    """``POST /v1/unload_lora_adapter`` (vLLM's body)."""

    lora_name: str = Field(min_length=1, max_length=200)
    lora_int_id: int | None = None


# ---------------------------------------------------------------------------- validation errors

# pydantic names union members in error locations ("str", "list[ContentPart]",
# "constrained-str", "function-after[...]"); field names here never contain "-" or "["
_TYPE_TAG = re.compile(r"[-\[]")
_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list", "none", "bytes"}


def _param(loc: tuple) -> str | None:
    """``("body", "messages", 0, "content", "list[ContentPart]", 1, "text")`` ->
    ``"messages[0].content[1].text"`` (the body prefix and union member tags removed)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif (part == "body" and not out) or part in _TYPE_NAMES or _TYPE_TAG.search(part):
            continue
        else:
            out += f".{part}" if out else part
    return out or None


def validation_error(errors: list[dict]) -> ApiError:
    """One 400 :class:`ApiError` from pydantic's error list: the most specific error (the
    deepest field path); alternatives of a union at that path are joined with "or"."""
    if not errors:
        return _bad("the request body is not valid")
    for e in errors:  # a body that is not JSON, or not an object
        if e.get("type") == "json_invalid":
            return _bad("the request body is not valid JSON")
        whole = _param(tuple(e.get("loc", ()))) is None
        if whole and e.get("type") in ("missing", "model_type", "model_attributes_type"):
            return _bad("the request body must be a JSON object")
    depth = max(len(e.get("loc", ())) for e in errors)
    deepest = [e for e in errors if len(e.get("loc", ())) == depth]
    param = _param(tuple(deepest[0].get("loc", ())))
    same = [e for e in errors if _param(tuple(e.get("loc", ()))) == param]
    msgs = list(dict.fromkeys(_clean_msg(e) for e in (same if len(same) > 1 else deepest[:1])))
    got = deepest[0].get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r:.60})"
    where = param or "body"
    if deepest[0].get("type") == "missing":
        return _bad(f"'{where}' is required", param)
    text = " or ".join(m if i == 0 else m[:1].lower() + m[1:] for i, m in enumerate(msgs))
    return _bad(f"'{where}': {text}{shown}", param)


def _clean_msg(e: dict) -> str:
    msg = str(e.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


# ---------------------------------------------------------------------------- conversions


def sampling_params(req: ChatCompletionRequest) -> tuple[SamplingParams, int, bool]:
    """(SamplingParams, top log-probs per token, whether ``max_tokens`` was given)."""
    logprobs = bool(req.logprobs)
    top = req.top_logprobs or 0
    if top and not logprobs:
        raise _bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    explicit = req.max_completion_tokens or req.max_tokens
    limits = current_limits()
    max_tokens = explicit or min(DEFAULT_MAX_TOKENS, limits.max_tokens)
    entries = req.n * max_tokens * (1 + top)
    if top and entries > limits.max_logprob_entries:
        raise _bad(
            limits.over(
                "max_logprob_entries",
                f"n * max_tokens * (1 + top_logprobs) = {entries:,} log-prob entries is over "
                "the limit (ask for fewer)",
            ),
            "top_logprobs",
            code="limit_exceeded",
        )
    if req.stream_options is not None and not req.stream:
        raise _bad("'stream_options' needs 'stream': true", "stream_options")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    params = SamplingParams(
        n=req.n,
        temperature=1.0 if req.temperature is None else float(req.temperature),
        top_p=1.0 if req.top_p is None else float(req.top_p),
        max_new_tokens=max_tokens,
        seed=req.seed,
        logprobs=logprobs,
        stop=tuple(stop),
        top_k=max(0, req.top_k or 0),
        repetition_penalty=1.0 if req.repetition_penalty is None else float(req.repetition_penalty),
    )
    return params, top, explicit is not None


class ImageStore:
    """Writes images sent as data URLs into a request's temporary folder; returns their paths.

    Each image is checked before it is decoded: only data URLs (nothing is fetched), a
    recognised image format, and width x height from the header within ``max_image_pixels``
    (all images of the request within ``max_request_pixels``, at most ``max_images``) of
    ``limits`` (default: :func:`current_limits`).
    """

    def __init__(self, folder: str | Path, limits: Limits | None = None):
        self.folder = Path(folder)
        self.limits = limits or current_limits()
        self.count = 0
        self.pixels = 0

    def save(self, url: Any, param: str) -> str:
        if not isinstance(url, str) or not url.startswith("data:"):
            raise _bad(
                "images must be sent inline as data URLs (data:image/png;base64,...); "
                "remote URLs are not fetched",
                param,
            )
        lim = self.limits
        if self.count >= lim.max_images:
            raise _bad(
                lim.over("max_images", f"at most {lim.max_images} images per request"),
                param,
                code="limit_exceeded",
            )
        try:
            _, data = parse_data_url(url)
            ext = extension_for(sniff_mime(data))
        except RmkitError as e:
            raise _bad(f"{param}: {e.message}", param) from None
        self.pixels += _header_pixels(data, param, lim)
        if self.pixels > lim.max_request_pixels:
            raise _bad(
                lim.over("max_request_pixels", "the images of this request hold more pixels"),
                param,
                code="limit_exceeded",
            )
        path = self.folder / f"image{self.count}{ext}"
        self.count += 1
        path.write_bytes(data)
        return str(path)


def _header_pixels(data: bytes, param: str, limits: Limits) -> int:
    """Width x height from the image header (nothing is decoded); 400 above the limit."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except Image.DecompressionBombError:  # Pillow's own guard (beyond 2 x its MAX_IMAGE_PIXELS)
        raise _bad(
            limits.over("max_image_pixels", f"{param}: an image beyond Pillow's pixel guard"),
            param,
            code="limit_exceeded",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise _bad(f"{param}: not a readable image", param) from None
    if w < 1 or h < 1:
        raise _bad(f"{param}: not a readable image", param)
    if w * h > limits.max_image_pixels:
        raise _bad(
            limits.over("max_image_pixels", f"{param}: an image of {w}x{h} = {w * h:,} pixels"),
            param,
            code="limit_exceeded",
        )
    return w * h


def convert_messages(
    messages: list[ChatMessage], images: ImageStore, is_vision: bool, param: str = "messages"
) -> list[dict]:
    """OpenAI chat messages -> rmkit chat messages (``developer`` becomes ``system``; image
    parts point at saved files). Image parts for a text-only model are a 400."""
    out = []
    for i, m in enumerate(messages):
        where = f"{param}[{i}].content"
        role = "system" if m.role == "developer" else m.role
        if isinstance(m.content, str):
            out.append({"role": role, "content": m.content})
            continue
        parts: list[dict] = []
        for j, part in enumerate(m.content):
            if part.type == "text":
                parts.append({"type": "text", "text": part.text})
                continue
            if not is_vision:
                raise _bad(
                    f"{where}[{j}]: an image part, but the served model reads text only",
                    f"{where}[{j}]",
                )
            url = part.image if part.type == "image" else part.image_url
            url = url.url if isinstance(url, ImageURL) else url
            parts.append({"type": "image", "image": images.save(url, f"{where}[{j}]")})
        out.append({"role": role, "content": parts})
    return out


def score_inputs(req: ScoreRequest, images: ImageStore, is_vision: bool) -> dict[str, Any]:
    """A ``/v1/score`` body -> keyword arguments of :func:`rmkit.serve.score.score_record`
    (a unified record plus the scoring options)."""
    from rmkit.prompts import builtin_templates

    if isinstance(req.prompt, list):
        prompt: Any = convert_messages(req.prompt, images, is_vision, "prompt")
    elif not req.prompt.strip():
        raise _bad("'prompt' must be a non-empty string or a list of chat messages", "prompt")
    else:
        prompt = req.prompt
    for i, c in enumerate(req.candidates):
        if not c.strip():
            raise _bad("'candidates' must be non-empty strings", f"candidates[{i}]")
    if req.images and not is_vision:
        raise _bad("'images' given, but the served model reads text only", "images")
    paths = [images.save(u, f"images[{i}]") for i, u in enumerate(req.images)]
    task = req.task or ("image_understanding" if paths else "text")
    cands = list(req.candidates)
    if task in ("image_generation", "video_generation"):
        cands = [images.save(c, f"candidates[{i}]") for i, c in enumerate(cands)]
    order = list(range(len(cands))) if req.order is None else list(req.order)
    if sorted(order) != list(range(len(cands))):
        raise _bad(f"'order' must be a permutation of 0..{len(cands) - 1}", "order")
    if req.template not in builtin_templates():
        raise _bad(
            f"'template' must name a built-in judge template ({', '.join(builtin_templates())})",
            "template",
        )
    record = {
        "id": "score-request",
        "source": "api",
        "task": task,
        "prompt": prompt,
        "images": paths,
        "candidates": cands,
        "label": None,
    }
    return {
        "record": record,
        "order": order,
        "template": req.template,
        "reasoning": req.reasoning,
        "max_reasoning_tokens": req.max_reasoning_tokens,
    }
