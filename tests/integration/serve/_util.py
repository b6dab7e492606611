"""Helpers for the ``rmkit serve`` tests: clients, raw HTTP, test images."""

from __future__ import annotations

import base64
import io
import json
import socket
import urllib.error
import urllib.request

import openai


def png_data_url(color=(255, 0, 0), size=(56, 56), mode="RGB") -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def client(srv, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url, api_key=key, max_retries=0, timeout=60)


def post(url: str, body, headers: dict | None = None, method: str = "POST"):
    """(status, JSON body or text, headers) of one request."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        url,
        data=data if method in ("POST", "PUT") else None,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, raw, hdrs = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, raw, hdrs = e.code, e.read(), e.headers
    try:
        return status, json.loads(raw), hdrs
    except ValueError:
        return status, raw.decode(), hdrs


def raw_http(srv, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes the connection (or ``timeout``)."""
    host, port = srv.address
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def status_and_json(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def sse_events(raw: bytes) -> list:
    """The ``data:`` payloads of a text/event-stream body (``[DONE]`` as the string)."""
    out = []
    for line in raw.decode().splitlines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out
