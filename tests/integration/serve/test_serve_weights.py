"""``rmkit serve --enable-weight-reload``: full weights replaced in place from a folder.

The folder is a ``save_pretrained`` of tiny-llama with every weight perturbed (its output head
is tied to the input embeddings); after ``/collective_rpc reload_weights`` the served logits
are those of the perturbed model.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from tests.integration.serve._util import post

from rmkit.generation.base import SamplingParams
from rmkit.generation.hf import HFBackend

CONV = [{"role": "user", "content": "Tell me about cats."}]
BODY = {"messages": CONV, "temperature": 0, "max_tokens": 8, "logprobs": True}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_text_model):
    from safetensors.torch import load_file, save_file

    from rmkit.models.loading import load_model

    root = tmp_path_factory.mktemp("weights")
    perturbed = load_model(str(tiny_text_model))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in perturbed.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    perturbed.model.save_pretrained(root / "new")
    shutil.copytree(root / "new", root / "wrong-shape")
    w = load_file(root / "wrong-shape" / "model.safetensors")
    key = next(k for k in w if "q_proj" in k)
    w[key] = torch.zeros(w[key].shape[0] + 1, w[key].shape[1])
    save_file(w, root / "wrong-shape" / "model.safetensors")
    shutil.copytree(root / "new", root / "missing")
    w = load_file(root / "missing" / "model.safetensors")
    del w[next(k for k in w if "down_proj" in k)]
    save_file(w, root / "missing" / "model.safetensors")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(root / "new", outside / "new")
    return root, outside, perturbed


@pytest.fixture()
def server(tiny_text_model, folders):
    from rmkit.models.loading import load_model
    from rmkit.serve import build_app
    from rmkit.serve.server import ModelServer

    app = build_app(
        "tiny-llama",
        loaded=load_model(str(tiny_text_model)),
        device="cpu",
        enable_weight_reload=True,
        weights_root=str(folders[0]),
    )
    with ModelServer(app, "127.0.0.1", 0) as srv:
        yield srv


def _rpc(srv, path: str, method: str = "reload_weights"):
    root = srv.url.removesuffix("/v1")
    return post(root + "/collective_rpc", {"method": method, "kwargs": {"weights_path": path}})


def test_reload_replaces_the_served_weights(server, folders):
    root, _, perturbed = folders
    s, before, _ = post(server.url + "/chat/completions", BODY)
    assert s == 200
    status, out, headers = _rpc(server, str(root / "new"))
    assert status == 200 and out == {"results": [None]} and "gen;dur=" in headers["server-timing"]
    status, out, _ = post(server.url.removesuffix("/v1") + "/reset_prefix_cache", {})
    assert status == 200 and out == {"success": True}
    s, after, _ = post(server.url + "/chat/completions", BODY)
    params = SamplingParams(temperature=0, max_new_tokens=8, logprobs=True)
    local = HFBackend(perturbed).generate_detailed([CONV], params)[0][0]
    lps = [e["logprob"] for e in after["choices"][0]["logprobs"]["content"]]
    assert lps == pytest.approx(local.token_logprobs, abs=1e-5)
    assert before["choices"][0]["logprobs"] != after["choices"][0]["logprobs"]


def test_reload_refuses_bad_folders_before_copying_anything(server, folders):
    root, outside, _ = folders
    s, before, _ = post(server.url + "/chat/completions", BODY)
    cases = [
        (str(outside / "new"), "outside the server's --weights-root"),
        (str(root / "../" / outside.name / "new"), "outside the server's --weights-root"),
        (str(root / "nope"), "no such folder"),
        (str(root / "wrong-shape"), "has shape"),
        (str(root / "missing"), "lacks 1 weight"),
    ]
    for path, message in cases:
        status, out, _ = _rpc(server, path)
        assert status == 400 and message in out["error"]["message"], (path, out)
        assert out["error"]["param"] == "kwargs.weights_path"
    status, out, _ = _rpc(server, str(root / "new"), method="sleep")
    assert status == 400 and out["error"]["param"] == "method"
    s, after, _ = post(server.url + "/chat/completions", BODY)
    assert after["choices"][0]["logprobs"] == before["choices"][0]["logprobs"]  # untouched


def test_reload_endpoints_need_the_flag(loaded_text):
    from rmkit.serve import build_app
    from rmkit.serve.server import ModelServer

    with ModelServer(
        build_app("tiny-llama", loaded=loaded_text, device="cpu"), "127.0.0.1", 0
    ) as srv:
        status, out, _ = _rpc(srv, "/tmp")
        assert status == 404 and "error" in out
