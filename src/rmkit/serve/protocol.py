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

import io
import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rmkit.errors import RmkitError
from rmkit.generation.base import SamplingParams, parse_data_url
from rmkit.generation.media import extension_for, sniff_mime

DEFAULT_MAX_TOKENS = 256
MAX_TOKENS = 4096  # largest max_tokens a request may ask for
MAX_N = 64
MAX_TOP_LOGPROBS = 20
MAX_STOP = 4
MAX_LOGPROB_ENTRIES = 262_144  # n * max_tokens * (1 + top_logprobs), when top_logprobs > 0
MAX_IMAGES = 8  # per request
MAX_IMAGE_PIXELS = 4096 * 4096  # per image, read from the header before decoding
MAX_REQUEST_PIXELS = 2 * MAX_IMAGE_PIXELS
MAX_CANDIDATES = 16
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
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    # vLLM's sampling fields: top_k -1 or 0 = off; repetition_penalty 1 = off, in (0, 2] as in
    # vLLM. Unset means off - never the model's generation_config.json values.
    top_k: int | None = Field(None, ge=-1)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: StopString | list[StopString] | None = Field(None, max_length=MAX_STOP)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # vLLM extensions
    return_token_ids: bool | None = False
    return_tokens_as_token_ids: bool | None = False

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
    candidates: list[str] = Field(min_length=2, max_length=MAX_CANDIDATES)
    images: list[str] = Field(default_factory=list, max_length=MAX_IMAGES)
    task: Literal[TASKS] | None = None  # type: ignore[valid-type]
    template: str = "default"
    order: list[int] | None = None
    reasoning: bool = False
    max_reasoning_tokens: int = Field(256, ge=1, le=MAX_TOKENS)


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
    max_tokens = explicit or DEFAULT_MAX_TOKENS
    if top and req.n * max_tokens * (1 + top) > MAX_LOGPROB_ENTRIES:
        raise _bad(
            f"n * max_tokens * (1 + top_logprobs) = {req.n * max_tokens * (1 + top):,} is over "
            f"the limit of {MAX_LOGPROB_ENTRIES:,} log-prob entries per request; ask for fewer",
            "top_logprobs",
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
    recognised image format, and width x height from the header within :data:`MAX_IMAGE_PIXELS`
    (all images of the request within :data:`MAX_REQUEST_PIXELS`, at most :data:`MAX_IMAGES`).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.count = 0
        self.pixels = 0

    def save(self, url: Any, param: str) -> str:
        if not isinstance(url, str) or not url.startswith("data:"):
            raise _bad(
                "images must be sent inline as data URLs (data:image/png;base64,...); "
                "remote URLs are not fetched",
                param,
            )
        if self.count >= MAX_IMAGES:
            raise _bad(f"at most {MAX_IMAGES} images per request", param)
        try:
            _, data = parse_data_url(url)
            ext = extension_for(sniff_mime(data))
        except RmkitError as e:
            raise _bad(f"{param}: {e.message}", param) from None
        self.pixels += _header_pixels(data, param)
        if self.pixels > MAX_REQUEST_PIXELS:
            raise _bad(
                f"the images of this request have more than {MAX_REQUEST_PIXELS:,} pixels", param
            )
        path = self.folder / f"image{self.count}{ext}"
        self.count += 1
        path.write_bytes(data)
        return str(path)


def _header_pixels(data: bytes, param: str) -> int:
    """Width x height from the image header (nothing is decoded); 400 above the limit."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise _bad(f"{param}: not a readable image", param) from None
    if w < 1 or h < 1 or w * h > MAX_IMAGE_PIXELS:
        raise _bad(
            f"{param}: image of {w}x{h} pixels; at most {MAX_IMAGE_PIXELS:,} pixels per image",
            param,
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
