"""``rmkit serve`` at the HTTP level: every error is OpenAI-shaped JSON, request framing is
checked, slow clients are cut off, and a busy model answers 503 with Retry-After."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest
from tests.integration.serve._util import post, raw_http, status_and_json

from rmkit.serve import build_app
from rmkit.serve.server import ModelServer
from rmkit.serve.worker import Job

CHAT = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
BODY = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}'


def _is_error(body: dict, status: int) -> bool:
    err = body.get("error")
    return (
        set(body) == {"error"}
        and set(err) == {"message", "type", "param", "code"}
        and isinstance(err["message"], str)
        and err["type"] == ("invalid_request_error" if status < 500 else "server_error")
    )


def test_error_statuses_are_openai_json(text_server):
    url = text_server.url
    cases = [
        (post(url + "/chat/completions", b"{not json"), 400),
        (post(url + "/chat/completions", b"[" * 100_000 + b"]" * 100_000), 413),  # over 64 KiB
        (post(url + "/chat/completions", b"[" * 20_000 + b"]" * 20_000), 400),  # deep nesting
        (post(url + "/chat/completions", b'{"messages": [{"role": "user", "content": NaN}]}'), 400),
        (post(url + "/chat/completions", [1, 2]), 400),
        (post(url + "/no/such/route", {}), 404),
        (post(url + "/models", None, method="DELETE"), 405),
        (post(url + "/models", {}, method="PUT"), 405),
        (post(url + "/chat/completions", None, method="GET"), 405),
        (post(url + "/load_lora_adapter", {"lora_name": "a", "lora_path": "b"}), 404),
    ]
    for (status, body, headers), want in cases:
        assert status == want and _is_error(body, status), (want, status, body)
        assert headers["content-type"] == "application/json"


def test_request_framing(text_server):
    # both Content-Length and Transfer-Encoding: refused (request smuggling)
    both = CHAT + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    status, body = status_and_json(raw_http(text_server, both))
    assert status == 400 and "Transfer-Encoding" in body["error"]["message"]
    # a POST with neither
    status, body = status_and_json(raw_http(text_server, CHAT + b"Connection: close\r\n\r\n"))
    assert status == 411 and _is_error(body, 411)
    # a malformed Content-Length (a non-ASCII digit): a JSON 400, not a crash
    bad = CHAT + "Content-Length: \u00b2\r\n\r\n".encode()
    status, body = status_and_json(raw_http(text_server, bad))
    assert status == 400 and _is_error(body, 400)
    # a chunked body is read (and counted) as it arrives
    chunked = CHAT + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    chunked += f"{len(BODY):x}\r\n".encode() + BODY + b"\r\n0\r\n\r\n"
    status, body = status_and_json(raw_http(text_server, chunked))
    assert status == 200 and body["object"] == "chat.completion"
    big = b"x" * (70 * 1024)
    chunked = CHAT + b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(big):x}\r\n".encode() + big
    status, body = status_and_json(raw_http(text_server, chunked + b"\r\n0\r\n\r\n"))
    assert status == 413 and body["error"]["code"] == "request_too_large"
    # a declared body over the limit: 413 before it is read
    declared = CHAT + b"Content-Length: 999999\r\nConnection: close\r\n\r\n"
    status, body = status_and_json(raw_http(text_server, declared))
    assert status == 413


def test_slow_and_idle_connections_are_closed(loaded_text):
    """A connection that never finishes its request head, or trickles its body, is closed."""
    app = build_app("tiny-llama", loaded=loaded_text, device="cpu")
    with ModelServer(app, "127.0.0.1", 0, header_timeout_s=0.5, body_timeout_s=0.5) as srv:
        socks = [socket.create_connection(srv.address, timeout=15) for _ in range(3)]
        socks[0].sendall(b"POST /v1/chat/comp")  # half a request line
        socks[1].sendall(CHAT + b"Content-Length: 1000\r\n\r\n{")  # one byte of the body
        for s in socks:  # socks[2] sends nothing at all
            assert s.recv(4096) == b""  # closed by the server (no answer to a partial request)
            s.close()
        # the server still answers
        status, body, _ = post(srv.url + "/chat/completions", json.loads(BODY))
        assert status == 200


def test_connection_cap(loaded_text):
    app = build_app("tiny-llama", loaded=loaded_text, device="cpu")
    with ModelServer(app, "127.0.0.1", 0, max_connections=2) as srv:
        held = [socket.create_connection(srv.address, timeout=15) for _ in range(2)]
        time.sleep(0.2)  # let the server accept them
        status, body = status_and_json(raw_http(srv, b""))
        assert status == 503 and body["error"]["code"] == "server_busy"
        for s in held:
            s.close()


def test_full_queue_is_503_with_retry_after(loaded_text):
    app = build_app("tiny-llama", loaded=loaded_text, device="cpu", max_queue=1)
    engine = app.state.engine
    with ModelServer(app, "127.0.0.1", 0) as srv:
        gate, taken = threading.Event(), threading.Event()
        engine.worker.submit(Job("call", lambda: (taken.set(), gate.wait(30))))
        assert taken.wait(30)
        first: list = []
        t = threading.Thread(
            target=lambda: first.append(post(srv.url + "/chat/completions", json.loads(BODY)))
        )
        t.start()
        deadline = time.monotonic() + 30
        while engine.worker.queued < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        status, body, headers = post(srv.url + "/chat/completions", json.loads(BODY))
        assert status == 503 and body["error"]["code"] == "server_busy"
        assert headers["retry-after"] == "1" and _is_error(body, 503)
        gate.set()
        t.join(60)
        assert first[0][0] == 200


def test_internal_errors_say_nothing(text_server, monkeypatch, caplog):
    engine = text_server.app.state.engine

    def broken(conv):
        raise ValueError("secret detail /home/someone/path")

    monkeypatch.setattr(engine, "prompt_ids", broken)
    caplog.set_level(logging.ERROR, logger="rmkit")
    status, body, _ = post(text_server.url + "/chat/completions", json.loads(BODY))
    assert status == 500 and _is_error(body, 500)
    assert "secret" not in json.dumps(body) and "Traceback" not in json.dumps(body)
    assert "secret detail" in caplog.text  # the details go to the log


def test_warns_when_exposed_without_a_key(loaded_text, caplog):
    caplog.set_level(logging.WARNING, logger="rmkit")
    app = build_app("tiny-llama", loaded=loaded_text, device="cpu")
    srv = ModelServer(app, "0.0.0.0", 0)
    srv.stop()
    assert "without an API key" in caplog.text
    caplog.clear()
    srv = ModelServer(app, "127.0.0.1", 0)
    srv.stop()
    assert "without an API key" not in caplog.text


@pytest.mark.parametrize("path", ["/v1/models", "/health"])
def test_request_log_lines(text_server, caplog, path):
    caplog.set_level(logging.INFO, logger="rmkit")
    post(text_server.url.removesuffix("/v1") + path, None, {"Authorization": "Bearer k1"}, "GET")
    deadline = time.monotonic() + 10  # the line is written once the answer has gone out
    while f'"GET {path}" 200' not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)
    assert f'"GET {path}" 200' in caplog.text
    assert "k1" not in caplog.text and "Bearer" not in caplog.text
