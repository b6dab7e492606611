"""Running ``rmkit serve``: uvicorn in a background thread (:class:`ModelServer`) and the
blocking CLI loop (:func:`serve_forever`).

uvicorn runs with a listen backlog of 2048, a keep-alive timeout, a cap on open connections and
a graceful shutdown. Its HTTP/1.1 protocol (h11) is extended by :class:`GuardedH11Protocol`:

- a connection must deliver a complete request head within ``header_timeout_s`` of opening (or
  of its previous answer), and a request's body within ``body_timeout_s`` of its head; otherwise
  it is closed. uvicorn alone never times out a connection that trickles bytes (slowloris);
- connections beyond ``max_connections`` get an immediate JSON 503 and are closed;
- a malformed request (bad ``Content-Length``, oversized header, ...) gets a JSON 400 instead of
  uvicorn's plain-text one.

The request handlers run on uvicorn's event loop; the model runs on the engine's worker thread.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from rmkit.errors import RmkitError
from rmkit.serve.app import DEFAULT_MAX_REQUEST_BYTES  # noqa: F401  (re-exported)
from rmkit.serve.protocol import error_body
from rmkit.serve.responses import dumps

log = logging.getLogger(__name__)

BACKLOG = 2048


def _raw_json(status: int, reason: str, body: dict, extra: str = "") -> bytes:
    data = dumps(body)
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\nconnection: close\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + data


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with request deadlines, a connection cap and JSON errors."""

    header_timeout_s = 30.0
    body_timeout_s = 60.0
    max_connections = 1024

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._timer: Any = None
        self._seen: Any = None
        if len(self.connections) > self.max_connections:
            body = error_body(
                "too many open connections; retry shortly", "server_error", code="server_busy"
            )
            transport.write(_raw_json(503, "Service Unavailable", body, "retry-after: 1\r\n"))
            transport.close()
            return
        self._arm(self.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and self.cycle is not self._seen:  # a new request head
            self._seen = self.cycle
            self._arm(self.body_timeout_s)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_timer", None) is not None:
            self._timer.cancel()
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(seconds, self._expire)

    def _expire(self) -> None:
        self._timer = None
        cycle = self.cycle
        waiting_for_head = cycle is None or cycle.response_complete
        if (waiting_for_head or cycle.more_body) and not self.transport.is_closing():
            self.transport.close()  # a request still arriving (slowly) or an idle connection
        elif not waiting_for_head:
            self._arm(self.header_timeout_s)  # a request in progress: look again later

    def send_400_response(self, msg: str) -> None:
        body = error_body(f"malformed HTTP request: {msg}", code="bad_request")
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.write(_raw_json(400, "Bad Request", body))
        self.transport.close()


class ModelServer:
    """A running server: ``start()`` serves in a background thread, ``stop()`` ends it.

    ``app`` is what :func:`rmkit.serve.build_app` returns. ``port=0`` picks a free port
    (:attr:`url` shows the real one). Use as a context manager in tests; :func:`serve_forever`
    wraps it for the CLI.
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        header_timeout_s: float = 30.0,
        body_timeout_s: float = 60.0,
        keep_alive_s: int = 10,
        max_connections: int = 1024,
        grace_s: float = 30.0,
    ):
        import uvicorn

        self.app, self.host = app, host
        self.model_name = app.state.engine.served_name
        try:
            self.sock = _bind(host, port)
        except OSError as e:
            raise RmkitError(
                f"cannot listen on {host}:{port} ({e.strerror or e})", hint="pick another --port"
            ) from None
        self.address = self.sock.getsockname()[:2]
        protocol = type(
            "Protocol",
            (GuardedH11Protocol,),
            {
                "header_timeout_s": header_timeout_s,
                "body_timeout_s": body_timeout_s,
                "max_connections": max_connections,
            },
        )
        config = uvicorn.Config(
            app,
            http=protocol,
            lifespan="on",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            backlog=BACKLOG,
            timeout_keep_alive=keep_alive_s,
            timeout_graceful_shutdown=int(grace_s),
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        if not _is_loopback(host) and not getattr(app.state, "auth", False):
            log.warning(
                "serving on %s without an API key: anyone who can reach this address can use "
                "the model (set --api-key-env)",
                host,
            )

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"

    def start(self, timeout_s: float = 60.0) -> ModelServer:
        self._thread = threading.Thread(target=self._run, name="rmkit-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RmkitError("the server did not start (see the log above)")
            time.sleep(0.02)
        return self

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException:  # noqa: BLE001 - uvicorn exits with SystemExit on startup errors
            log.exception("the server stopped with an error")

    def stop(self) -> None:
        """Stop accepting requests, let the requests in progress finish (up to ``grace_s``),
        stop the model worker, close."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sock.close()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_forever(server: ModelServer) -> None:
    """Serve until SIGINT or SIGTERM, then shut down cleanly (called from the main thread)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        log.info("serving %s at %s (Ctrl-C to stop)", server.model_name, server.url)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        log.info("server stopped")
