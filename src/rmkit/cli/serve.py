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
) -> None:
    """Serve MODEL over HTTP: /v1/models, /v1/chat/completions, /v1/score. Ctrl-C stops it."""
    from rmkit.serve import build_app
    from rmkit.serve.server import ModelServer, serve_forever

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
    )
    serve_forever(ModelServer(app, host, port))
