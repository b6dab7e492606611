"""``rmkit serve``: an OpenAI-compatible server (chat completions, verdict scoring) for a model."""

from __future__ import annotations

import typer

Opt = typer.Option


def register(app: typer.Typer) -> None:
    app.command("serve", no_args_is_help=True)(serve_cmd)


def serve_cmd(
    model: str = typer.Argument(..., help="Built-in name (smollm2-135m, ...), folder or hub id."),
    adapter: str = Opt(None, help="PEFT adapter folder to load on top."),
    host: str = Opt("127.0.0.1", help="Address to bind (0.0.0.0 exposes it to the network)."),
    port: int = Opt(8000, help="Port to listen on (0 picks a free one)."),
    api_key_env: str = Opt(None, help="Env variable with the key clients must send (Bearer)."),
    max_request_bytes: int = Opt(32 * 1024 * 1024, help="Larger request bodies get HTTP 413."),
    dtype: str = Opt("float32", help="float32, bfloat16 or float16."),
    batch_size: int = Opt(16, help="Most sequences generated in one batch."),
    device: str = Opt("auto", help="auto (CUDA when available), cpu or cuda."),
    served_model_name: str = Opt(None, help="Name clients use (default: MODEL)."),
    enable_lora: bool = Opt(False, "--enable-lora", help="Add the LoRA load/unload endpoints."),
    lora_root: str = Opt(None, help="Adapters may only be loaded from inside this folder."),
    max_loras: int = Opt(4, help="Most runtime LoRA adapters loaded at once."),
    enable_weight_reload: bool = Opt(
        False, "--enable-weight-reload", help="Add /collective_rpc reload_weights (RL sync)."
    ),
    weights_root: str = Opt(None, help="Weights may only be reloaded from inside this folder."),
    merge_lora: bool = Opt(False, "--merge-lora", help="Fold runtime adapters in to generate."),
    logprobs_mode: str = Opt("raw_logprobs", help="raw_logprobs or processed_logprobs (vLLM's)."),
    # per-request limits (docs/serving.md, "Limits"): over one -> HTTP 400 naming it; the
    # defaults are rmkit.serve.protocol.Limits()'s (literals here: no import at CLI start)
    max_tokens_limit: int = Opt(4096, help="Largest max_tokens a request may ask for."),
    max_n: int = Opt(64, help="Largest n (choices) per chat request."),
    max_top_logprobs: int = Opt(20, help="Largest top_logprobs."),
    max_logprob_entries: int = Opt(
        262_144, help="Most n x max_tokens x (1 + top_logprobs) per request."
    ),
    max_images: int = Opt(8, help="Most images per request."),
    max_image_pixels: int = Opt(
        4096 * 4096, help="Most pixels per image (from its header, before decoding)."
    ),
    max_request_pixels: int = Opt(2 * 4096 * 4096, help="Most pixels of all images."),
    max_candidates: int = Opt(16, help="Most candidates per /v1/score (<= 26)."),
    max_prompt_tokens: int = Opt(
        None, help="Most prompt tokens per request (default and upper bound: model context)."
    ),
    max_queue: int = Opt(256, help="Requests waiting for the model before HTTP 503."),
    max_connections: int = Opt(1024, help="Open connections before HTTP 503."),
    header_timeout: float = Opt(30.0, help="Seconds a connection has to send a request head."),
    body_timeout: float = Opt(60.0, help="Seconds a request has to send its body."),
    keep_alive: int = Opt(10, help="Seconds an idle keep-alive connection stays open."),
) -> None:
    """Serve MODEL over HTTP: /v1/models, /v1/chat/completions, /v1/score. Ctrl-C stops it."""
    from rmkit.errors import RmkitError
    from rmkit.serve import build_app
    from rmkit.serve import protocol as P
    from rmkit.serve.server import ModelServer, serve_forever

    limits = P.Limits(
        max_tokens=max_tokens_limit,
        max_n=max_n,
        max_top_logprobs=max_top_logprobs,
        max_logprob_entries=max_logprob_entries,
        max_images=max_images,
        max_image_pixels=max_image_pixels,
        max_request_pixels=max_request_pixels,
        max_candidates=max_candidates,
        max_prompt_tokens=max_prompt_tokens,
    )
    for flag, value in (
        ("--max-queue", max_queue),
        ("--max-connections", max_connections),
        ("--header-timeout", header_timeout),
        ("--body-timeout", body_timeout),
        ("--keep-alive", keep_alive),
    ):
        if value <= 0:
            raise RmkitError(f"{flag} must be positive (got {value})")

    app = build_app(
        model,
        adapter=adapter,
        dtype=dtype,
        batch_size=batch_size,
        api_key_env=api_key_env,
        max_request_bytes=max_request_bytes,
        device=device,
        served_model_name=served_model_name,
        enable_lora=enable_lora,
        lora_root=lora_root,
        max_loras=max_loras,
        enable_weight_reload=enable_weight_reload,
        weights_root=weights_root,
        merge_lora=merge_lora,
        logprobs_mode=logprobs_mode,
        max_queue=max_queue,
        limits=limits,
    )
    server = ModelServer(
        app,
        host,
        port,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        keep_alive_s=keep_alive,
        max_connections=max_connections,
    )
    serve_forever(server)
