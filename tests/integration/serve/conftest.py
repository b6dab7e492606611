"""Make ``tests.helpers`` importable however pytest is started, load the tiny models once, and
serve them (one text and one vision-language server for the whole folder)."""

import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[3])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.helpers.models import loaded_text, loaded_vlm  # noqa: E402, F401


@pytest.fixture(scope="package")
def text_server(loaded_text):  # noqa: F811
    from rmkit.serve import build_app
    from rmkit.serve.server import ModelServer

    app = build_app("tiny-llama", loaded=loaded_text, device="cpu", max_request_bytes=64 * 1024)
    with ModelServer(app, "127.0.0.1", 0) as srv:
        yield srv


@pytest.fixture(scope="package")
def vlm_server(loaded_vlm):  # noqa: F811
    from rmkit.serve import build_app
    from rmkit.serve.server import ModelServer

    app = build_app("tiny-qwen2.5-vl", loaded=loaded_vlm, device="cpu")
    with ModelServer(app, "127.0.0.1", 0) as srv:
        yield srv
