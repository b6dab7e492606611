"""The ASGI application of ``rmkit serve``: FastAPI routes plus one guard middleware.

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` (streaming with
``stream: true``), ``POST /v1/score``, and with LoRA enabled ``POST /v1/load_lora_adapter`` and
``POST /v1/unload_lora_adapter``. Handlers validate the body (pydantic), convert it, submit a
job to the model worker and await its events; they never run model work themselves.

:class:`Guard` runs before routing, for every request: the API key (before the body is read),
``Content-Length`` together with ``Transfer-Encoding`` (refused: request smuggling), a POST with
neither (411), the body limit (413 from the declared length without reading; a chunked body is
counted as it arrives), one log line per request (client, method, path, status, seconds - never
headers or bodies), and any unexpected exception as a 500 whose body says nothing about it (the
traceback goes to the log). Every error is an OpenAI-shaped JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rmkit.errors import RmkitError
from rmkit.serve import protocol as P
from rmkit.serve import responses as R
from rmkit.serve.engine import ChatWork, ServeEngine
from rmkit.serve.worker import Job

log = logging.getLogger("rmkit.serve.server")

DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
DRAIN_CAP_BYTES = 256 * 1024 * 1024  # a declared body above this also closes the connection
ROUTES = "/health, /v1/models, /v1/chat/completions, /v1/score"


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return R.dumps(content)


def error_response(e: P.ApiError) -> JSON:
    return JSON(e.body(), status_code=e.status, headers=e.headers)


def create_app(
    engine: ServeEngine, *, api_key: str | None = None, max_request_bytes: int | None = None
) -> FastAPI:
    """The FastAPI app serving ``engine`` (the worker starts and stops with the app)."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        engine.worker.start()
        yield
        await asyncio.to_thread(engine.worker.stop)

    app = FastAPI(
        title="rmkit serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.engine = engine
    app.add_middleware(
        Guard,
        api_key=api_key,
        max_request_bytes=max_request_bytes or DEFAULT_MAX_REQUEST_BYTES,
        limits=engine.limits,
    )
    _add_error_handlers(app)
    _add_routes(app, engine)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(P.ApiError)
    async def _api_error(_request: Request, e: P.ApiError) -> JSON:
        return error_response(e)

    @app.exception_handler(RmkitError)
    async def _rmkit_error(_request: Request, e: RmkitError) -> JSON:
        return error_response(P.ApiError(400, e.message))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, e: RequestValidationError) -> JSON:
        return error_response(P.validation_error(list(e.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSON:
        path = _printable(request.url.path)
        if e.status_code == 404:
            message, code = f"no route {path}; rmkit serve offers {ROUTES}", "not_found"
        elif e.status_code == 405:
            message, code = (
                f"method {request.method} is not allowed on {path}",
                "method_not_allowed",
            )
        elif e.status_code == 400:  # FastAPI could not parse the body (e.g. nested too deep)
            message, code = "the request body could not be parsed as JSON", None
        else:
            message, code = str(e.detail), None
        return error_response(P.ApiError(e.status_code, message, code=code, headers=e.headers))


def _text_chars(messages: list[P.ChatMessage]) -> int:
    """Characters of text in chat messages (for the length pre-check)."""
    total = 0
    for m in messages:
        if isinstance(m.content, str):
            total += len(m.content)
        else:
            total += sum(len(p.text or "") for p in m.content if p.type == "text")
    return total


def _timing(job: Job) -> dict[str, str]:
    return {"Server-Timing": f"gen;dur={job.gen_ms:.1f}, queue;dur={job.queue_ms:.1f}"}


async def _wait(job: Job) -> Any:
    """The result of a job (its "done" payload); raises what the worker reported."""
    try:
        while True:
            kind, payload = await job.events.get()
            if kind == "done":
                return payload
            if kind == "error":
                raise payload
    except asyncio.CancelledError:
        job.cancelled = True
        raise


def _add_routes(app: FastAPI, engine: ServeEngine) -> None:
    @app.get("/health")
    async def health() -> JSON:
        return JSON({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> JSON:
        base, adapters = engine.model_ids()
        return JSON(R.models_list(base, adapters, engine.created))

    @app.post("/v1/chat/completions")
    async def chat_completions(req: P.ChatCompletionRequest) -> Response:
        adapter = engine.resolve_model(req.model)
        params, top, explicit = P.sampling_params(req)
        engine.check_text_length(_text_chars(req.messages), "messages")
        images = TempImages()
        try:
            conv = P.convert_messages(req.messages, images, engine.is_vision)
            work = ChatWork(conv, params, top, adapter, explicit, stream=bool(req.stream))
            job = engine.chat_job(work)
            engine.worker.submit(job)
            if req.stream:
                response = await _stream(engine, req, job, images)
                images = None  # the stream cleans up
                return response
            samples = await _wait(job)
        finally:
            if images is not None:
                images.cleanup()
        name = req.model or engine.served_name
        build = R.chat_completion
        args = (name, samples, engine.tokenizer, work.prompt_ids, req)
        body = await asyncio.to_thread(build, *args) if params.logprobs else build(*args)
        return JSON(body, headers=_timing(job))

    @app.post("/v1/score")
    async def score(req: P.ScoreRequest) -> JSON:
        adapter = engine.resolve_model(req.model)
        prompt = req.prompt if isinstance(req.prompt, str) else ""
        chars = len(prompt) + _text_chars(req.prompt if isinstance(req.prompt, list) else [])
        if req.task not in ("image_generation", "video_generation"):
            chars += sum(len(c) for c in req.candidates)
        engine.check_text_length(chars, "prompt")
        images = TempImages()
        try:
            inputs = P.score_inputs(req, images, engine.is_vision)
            job = engine.call_job(lambda: engine.score(inputs, adapter))
            engine.worker.submit(job)
            out = await _wait(job)
        finally:
            images.cleanup()
        out["model"] = req.model or engine.served_name
        return JSON(out, headers=_timing(job))

    if engine.weight_reload:

        @app.post("/collective_rpc")
        async def collective_rpc(req: P.CollectiveRpcRequest) -> JSON:
            job = engine.call_job(lambda: engine.reload_weights(req.kwargs.weights_path))
            engine.worker.submit(job)
            await _wait(job)
            return JSON({"results": [None]}, headers=_timing(job))

        @app.post("/reset_prefix_cache")
        async def reset_prefix_cache() -> JSON:
            return JSON({"success": True})  # rmkit serve keeps no prefix cache

    if not engine.lora_enabled:
        return

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(req: P.LoadLoraRequest) -> Response:
        job = engine.call_job(
            lambda: engine.lora.load(req.lora_name, req.lora_path, req.load_inplace)
        )
        engine.worker.submit(job)
        return Response(await _wait(job), media_type="text/plain", headers=_timing(job))

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(req: P.UnloadLoraRequest) -> Response:
        job = engine.call_job(lambda: engine.lora.unload(req.lora_name))
        engine.worker.submit(job)
        return Response(await _wait(job), media_type="text/plain", headers=_timing(job))


async def _stream(
    engine: ServeEngine, req: P.ChatCompletionRequest, job: Job, images: TempImages
) -> StreamingResponse:
    """Wait until the worker starts the request (errors before that are plain JSON errors),
    then stream its chunks (:class:`rmkit.serve.responses.ChunkStream`)."""
    work: ChatWork = job.payload
    try:
        while True:
            kind, payload = await job.events.get()
            if kind == "error":
                raise payload
            if kind == "start":
                break
    except BaseException:
        job.cancelled = True
        images.cleanup()
        raise
    n, greedy = work.params.n, work.params.greedy
    live = None
    if not work.params.logprobs:
        live = [R.LiveText(engine.tokenizer, work.params.stop, engine.end_ids) for _ in range(n)]
    chunks = R.ChunkStream(req.model or engine.served_name, n, engine.tokenizer, req, live)

    async def events() -> AsyncIterator[bytes]:
        finished = False
        try:
            for line in chunks.start(payload):
                yield line
            while True:
                kind, data = await job.events.get()
                if kind == "tokens":
                    for sample, token in data:
                        for choice in range(n) if greedy else (sample,):
                            for line in chunks.tokens(choice, token):
                                yield line
                elif kind == "done":
                    for line in chunks.finish(data):
                        yield line
                    break
                elif kind == "error":
                    e = data if isinstance(data, P.ApiError) else _as_api_error(data)
                    yield R.ChunkStream.error_event(e.body())
                    break
            yield R.ChunkStream.done()
            finished = True
        finally:
            if not finished:
                job.cancelled = True
            images.cleanup()

    headers = {
        "Server-Timing": f"queue;dur={job.queue_ms:.1f}",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    }
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _as_api_error(e: BaseException) -> P.ApiError:
    if isinstance(e, RmkitError):
        return P.ApiError(400, e.message)
    return P.ApiError(500, "internal error (see the server log)", code="internal_error")


class TempImages(P.ImageStore):
    """An :class:`~rmkit.serve.protocol.ImageStore` whose folder is made on the first image."""

    def __init__(self) -> None:
        super().__init__("")
        self._dir: str | None = None

    def save(self, url: Any, param: str) -> str:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="rmkit-serve-")
            self.folder = type(self.folder)(self._dir)
        return super().save(url, param)

    def cleanup(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


# ---------------------------------------------------------------------------- the guard


def _printable(text: str, limit: int = 200) -> str:
    text = text[:limit]
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


class _ClientGone(Exception):
    pass


class Guard:
    """Checks every request before routing (see the module docstring); plain ASGI."""

    def __init__(self, app: Any, *, api_key: str | None, max_request_bytes: int, limits: P.Limits):
        self.app, self.api_key, self.max_request_bytes = app, api_key, max_request_bytes
        self.limits = limits

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state = {"status": 500, "started": False}

        async def send_tracked(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["started"], state["status"] = True, message["status"]
            await send(message)

        try:
            self._check(scope)
            body = await self._read_body(scope, receive)
            with P.using_limits(self.limits):  # what the request models check against
                await self.app(scope, _replay(body, receive), send_tracked)
        except P.ApiError as e:
            if not state["started"]:
                await _send_json(send_tracked, e.status, e.body(), e.headers)
        except _ClientGone:
            state["status"] = 499  # the client went away before its body arrived
        except Exception:
            log.exception("request failed: %s %s", scope["method"], _printable(scope["path"]))
            if not state["started"]:
                body = P.error_body(
                    "internal error (see the server log)", "server_error", code="internal_error"
                )
                await _send_json(send_tracked, 500, body, {})
        finally:
            client = (scope.get("client") or ("-",))[0]
            log.info(
                '%s "%s %s" %d %.3fs',
                client,
                scope["method"],
                _printable(scope["path"]),
                state["status"],
                time.perf_counter() - t0,
            )

    def _check(self, scope: dict) -> None:
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)
        if self.api_key and scope["path"] != "/health":
            scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode("utf-8", "replace"), self.api_key.encode("utf-8")
            )
            if not ok:
                raise P.ApiError(
                    401,
                    "invalid or missing API key (send Authorization: Bearer <key>)",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        length, chunked = headers.get(b"content-length"), b"transfer-encoding" in headers
        if length is not None and chunked:
            raise P.ApiError(
                400,
                "a request must not carry both Content-Length and Transfer-Encoding",
                headers={"Connection": "close"},
            )
        if scope["method"] == "POST" and length is None and not chunked:
            raise P.ApiError(411, "a Content-Length header is required", code="length_required")
        if length is not None and int(length) > self.max_request_bytes:  # h11 checked: digits
            raise P.ApiError(
                413,
                f"request body of {int(length)} bytes exceeds the limit of "
                f"{self.max_request_bytes} bytes",
                code="request_too_large",
                headers={"Connection": "close"} if int(length) > DRAIN_CAP_BYTES else None,
            )

    async def _read_body(self, scope: dict, receive: Any) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_request_bytes:
                raise P.ApiError(
                    413,
                    f"request body exceeds the limit of {self.max_request_bytes} bytes",
                    code="request_too_large",
                    headers={"Connection": "close"},
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    """An ASGI ``receive`` that hands the app the body already read, then the real events."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_json(send: Any, status: int, body: dict, headers: dict[str, str]) -> None:
    data = R.dumps(body)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
