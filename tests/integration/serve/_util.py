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


class ProcessServer:
    """``rmkit serve`` as a real process on 127.0.0.1 (``python -m rmkit serve ... --port 0``),
    with its memory readable from ``/proc``. ``url`` ends in ``/v1``; stderr is drained into
    :attr:`log` by a thread so the server never blocks on a full pipe."""

    def __init__(self, args: list[str], cwd: str, env: dict | None = None, timeout: float = 120):
        import os
        import subprocess
        import sys
        import threading
        import time

        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RMKIT_NO_PROGRESS": "1", **(env or {})}
        cmd = [sys.executable, "-m", "rmkit", "serve", *args, "--port", "0", "--device", "cpu"]
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        self.pid = self.proc.pid
        self.log: list[str] = []
        found = threading.Event()
        self.url = ""

        def drain() -> None:
            for line in self.proc.stderr:
                self.log.append(line)
                if not found.is_set() and " at http://" in line:
                    self.url = line.split(" at ", 1)[1].split()[0]
                    found.set()
            found.set()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.1):
            if time.monotonic() > deadline:
                break
        if not self.url:
            self.stop()
            raise RuntimeError("rmkit serve did not start:\n" + "".join(self.log))
        host_port = self.url.split("//", 1)[1].split("/", 1)[0]
        self.address = (host_port.rsplit(":", 1)[0], int(host_port.rsplit(":", 1)[1]))

    def status(self, field: str) -> int:
        """A ``/proc/<pid>/status`` value (``VmRSS``, ``VmHWM`` in bytes; ``Threads``)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    parts = line.split()
                    return int(parts[1]) * (1024 if len(parts) > 2 else 1)
        raise KeyError(field)

    def reset_peak(self) -> bool:
        """Reset the peak RSS (VmHWM) to the current RSS (Linux ``clear_refs`` 5)."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except Exception:  # noqa: BLE001
                self.proc.kill()
                self.proc.wait()
