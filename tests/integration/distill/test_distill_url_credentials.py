"""SECURITY-REVIEW L7: credentials inside ``--base-url`` (userinfo, ``?api-key=``) are neither
printed nor saved. Reproduces the review's command against a server that refuses every request."""

from __future__ import annotations

import socket

from tests.integration.distill.distill_helpers import cli_env, start_cli

from rmkit.utils.redact import redact_secrets, redact_url


def test_redact_url_strips_userinfo_and_secret_query_values():
    url = "http://alice:URLPASSWORD123@host/v1?api-key=QUERYSECRET&api-version=2024"
    assert redact_url(url) == "http://***@host/v1?api-key=***&api-version=2024"
    assert redact_url("http://localhost:8000/v1") == "http://localhost:8000/v1"
    assert redact_url("not a url") == "not a url"
    saved = redact_secrets({"judge": {"base_url": url, "n": [1, "https://u:p@x/?token=T"]}})
    assert "URLPASSWORD123" not in str(saved) and "QUERYSECRET" not in str(saved)
    assert "T" not in saved["judge"]["n"][1].split("token=")[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distill_prints_and_saves_no_url_credentials(tmp_path, records_file):
    src = records_file(2)
    out = tmp_path / "out"
    url = f"http://alice:URLPASSWORD123@127.0.0.1:{free_port()}/v1?api-key=QUERYSECRET"
    args = ["distill", "-i", src, "--base-url", url, "--api-model", "test-model", "-o", out]
    args += ["--set", "teacher.max_retries=0"]
    proc = start_cli(args, cli_env())
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert "127.0.0.1" in stderr  # the error still names the server
    for secret in ("URLPASSWORD123", "QUERYSECRET"):
        assert secret not in stdout and secret not in stderr
        for f in out.rglob("*"):
            if f.is_file():
                assert secret not in f.read_text(errors="replace"), f
