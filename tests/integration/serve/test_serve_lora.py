"""Runtime LoRA adapters in ``rmkit serve`` (vLLM's load/unload endpoints and semantics).

Adapters are made here with peft on tiny-llama, their B weights perturbed so they change the
output, and saved with ``save_pretrained``. The served model is a fresh load (the session's
``loaded_text`` is never wrapped), and generation through an adapter is compared with a local
``PeftModel`` holding the same adapter.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from tests.integration.serve._util import client, post

from rmkit.generation.base import SamplingParams
from rmkit.generation.hf import HFBackend

CONV = [{"role": "user", "content": "Tell me about cats."}]
SAMPLED = {"temperature": 1.0, "seed": 3, "n": 2, "max_tokens": 8, "logprobs": True}
PARAMS = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=3, logprobs=True)


def _make_adapter(model_path, out, seed: int, targets=("q_proj", "v_proj", "down_proj")):
    from peft import LoraConfig, get_peft_model

    from rmkit.models.loading import load_model
    from rmkit.models.lora import quiet_peft

    base = load_model(str(model_path)).model
    with quiet_peft():
        peft_model = get_peft_model(
            base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(targets))
        )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_text_model):
    root = tmp_path_factory.mktemp("loras")
    _make_adapter(tiny_text_model, root / "a1", 1)
    _make_adapter(tiny_text_model, root / "a2", 2, targets=("k_proj", "o_proj"))
    # the same adapter with one weight of the wrong shape: made for another model
    from safetensors.torch import load_file, save_file

    shutil.copytree(root / "a1", root / "wrong-shape")
    weights = load_file(root / "wrong-shape" / "adapter_model.safetensors")
    key = next(k for k in weights if "lora_A" in k)
    weights[key] = torch.zeros(4, weights[key].shape[1] + 3)
    save_file(weights, root / "wrong-shape" / "adapter_model.safetensors")
    (root / "empty").mkdir()
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(root / "a1", outside / "a1")
    (root / "escape").symlink_to(outside / "a1")
    return root, outside


@pytest.fixture(scope="module")
def lora_server(tiny_text_model, adapters):
    from rmkit.models.loading import load_model
    from rmkit.serve import build_app
    from rmkit.serve.server import ModelServer

    loaded = load_model(str(tiny_text_model))  # its own copy: adapters wrap it
    app = build_app(
        "tiny-llama", loaded=loaded, device="cpu", enable_lora=True,
        lora_root=str(adapters[0]), max_loras=2,
    )  # fmt: skip
    with ModelServer(app, "127.0.0.1", 0) as srv:
        yield srv


def _local(tiny_text_model, folder) -> list:
    """Generation with a plain local PeftModel holding the adapter (what the trainer runs)."""
    from peft import PeftModel

    from rmkit.models.loading import load_model
    from rmkit.models.lora import quiet_peft

    loaded = load_model(str(tiny_text_model))
    with quiet_peft():
        loaded.model = PeftModel.from_pretrained(loaded.model, str(folder))
    loaded.model.eval()
    return HFBackend(loaded, batch_size=16).generate_detailed([CONV], PARAMS)[0]


def _chat(srv, model: str) -> dict:
    status, out, _ = post(
        srv.url + "/chat/completions",
        {"model": model, "messages": CONV, "return_token_ids": True, **SAMPLED},
    )
    assert status == 200, out
    return out


def _same(out: dict, samples: list) -> bool:
    for choice, sample in zip(out["choices"], samples, strict=True):
        lps = [e["logprob"] for e in choice["logprobs"]["content"]]
        if choice["token_ids"] != sample.token_ids or lps != pytest.approx(
            sample.token_logprobs, abs=1e-5
        ):
            return False
    return True


def _load(srv, name, path, inplace=None):
    body = {"lora_name": name, "lora_path": str(path)}
    if inplace is not None:
        body["load_inplace"] = inplace
    return post(srv.url + "/load_lora_adapter", body)


def test_load_generate_replace_unload(lora_server, adapters, tiny_text_model):
    root, _ = adapters
    base_before = _chat(lora_server, "tiny-llama")
    status, text, headers = _load(lora_server, "policy", "a1")
    assert (status, text) == (200, "Success: LoRA adapter 'policy' added successfully.")
    assert headers["content-type"].startswith("text/plain")
    cards = client(lora_server).models.list().data
    assert [(m.id, getattr(m, "parent", None)) for m in cards] == [
        ("tiny-llama", None),
        ("policy", "tiny-llama"),
    ]
    # generation through the adapter equals a local PeftModel with it, and differs from the base
    through = _chat(lora_server, "policy")
    assert _same(through, _local(tiny_text_model, root / "a1"))
    assert not _same(through, _local_base(tiny_text_model))
    assert _chat(lora_server, "tiny-llama")["choices"] == base_before["choices"]
    # a name already loaded needs load_inplace; then the new files replace the weights
    status, out, _ = _load(lora_server, "policy", "a2")
    assert status == 400 and "load_inplace" in out["error"]["message"]
    status, text, _ = _load(lora_server, "policy", "a2", inplace=True)
    assert status == 200 and "added successfully" in text
    assert _same(_chat(lora_server, "policy"), _local(tiny_text_model, root / "a2"))
    status, text, _ = post(lora_server.url + "/unload_lora_adapter", {"lora_name": "policy"})
    assert (status, text) == (200, "Success: LoRA adapter 'policy' removed successfully.")
    status, out, _ = post(
        lora_server.url + "/chat/completions", {"model": "policy", "messages": CONV}
    )
    assert status == 404 and out["error"]["code"] == "model_not_found"
    assert [m.id for m in client(lora_server).models.list().data] == ["tiny-llama"]
    assert _chat(lora_server, "tiny-llama")["choices"] == base_before["choices"]


def _local_base(tiny_text_model) -> list:
    from rmkit.models.loading import load_model

    loaded = load_model(str(tiny_text_model))
    return HFBackend(loaded, batch_size=16).generate_detailed([CONV], PARAMS)[0]


def test_load_errors(lora_server, adapters):
    root, outside = adapters
    cases = [
        (("tiny-llama", "a1"), 400, "conflicts with a served base model"),
        (("x", "missing"), 400, "no such folder"),
        (("x", "empty"), 400, "not a PEFT adapter"),
        (("x", "wrong-shape"), 400, "shape"),
        (("x", "../outside/a1"), 400, "outside"),
        (("x", str(outside / "a1")), 400, "outside"),
        (("x", "escape"), 400, "outside"),  # a symlink out of the root
    ]
    for (name, path), want, words in cases:
        status, out, _ = _load(lora_server, name, path)
        assert status == want and words in out["error"]["message"], (path, out)
        assert out["error"]["param"] in ("lora_name", "lora_path")
        assert str(root) not in out["error"]["message"]  # server paths are not echoed
    status, out, _ = post(lora_server.url + "/unload_lora_adapter", {"lora_name": "nope"})
    assert status == 404 and _is_json_error(out)
    status, out, _ = post(lora_server.url + "/load_lora_adapter", {"lora_name": "x"})
    assert status == 400 and out["error"]["param"] == "lora_path"
    # --max-loras 2: a third adapter must wait for an unload
    for name in ("one", "two"):
        assert _load(lora_server, name, "a1")[0] == 200
    status, out, _ = _load(lora_server, "three", "a2")
    assert status == 400 and "unload one first" in out["error"]["message"]
    for name in ("one", "two"):
        assert post(lora_server.url + "/unload_lora_adapter", {"lora_name": name})[0] == 200


def _is_json_error(out) -> bool:
    return isinstance(out, dict) and set(out["error"]) == {"message", "type", "param", "code"}


def test_startup_adapter_stays_the_base_of_runtime_ones(adapters, tiny_text_model):
    """Started with --adapter (PEFT's "default"), the served name keeps that adapter while
    requests naming a runtime adapter switch to it."""
    from rmkit.models.loading import load_model
    from rmkit.serve import build_app
    from rmkit.serve.server import ModelServer

    root, _ = adapters
    loaded = load_model(str(tiny_text_model), adapter=root / "a1")
    app = build_app("tuned", loaded=loaded, device="cpu", enable_lora=True, lora_root=str(root))
    with ModelServer(app, "127.0.0.1", 0) as srv:
        with_a1 = _local(tiny_text_model, root / "a1")
        assert _same(_chat(srv, "tuned"), with_a1)
        assert _load(srv, "next", "a2")[0] == 200
        assert _same(_chat(srv, "next"), _local(tiny_text_model, root / "a2"))
        assert _same(_chat(srv, "tuned"), with_a1)
        assert post(srv.url + "/unload_lora_adapter", {"lora_name": "next"})[0] == 200
        assert _same(_chat(srv, "tuned"), with_a1)


def test_merged_adapter_and_processed_logprobs(adapters, tiny_text_model):
    """``--merge-lora`` generates what the unmerged adapter generates (to float rounding), and
    ``--logprobs-mode processed_logprobs`` reports log-probs after temperature and top-p."""
    import math

    from rmkit.models.loading import load_model
    from rmkit.serve import build_app
    from rmkit.serve.server import ModelServer

    root = adapters[0]
    body = {"model": "a1", "messages": CONV, "return_token_ids": True, "max_tokens": 8,
            "logprobs": True, "temperature": 0.7, "top_p": 0.8, "seed": 5}  # fmt: skip
    outs = {}
    for merge, mode in [
        (False, "raw_logprobs"),
        (True, "raw_logprobs"),
        (False, "processed_logprobs"),
    ]:
        app = build_app(
            "tiny-llama", loaded=load_model(str(tiny_text_model)), device="cpu",
            enable_lora=True, lora_root=str(root), merge_lora=merge, logprobs_mode=mode,
        )  # fmt: skip
        with ModelServer(app, "127.0.0.1", 0) as srv:
            status, _, _ = post(
                srv.url + "/load_lora_adapter", {"lora_name": "a1", "lora_path": str(root / "a1")}
            )
            assert status == 200
            status, out, _ = post(srv.url + "/chat/completions", body)
            assert status == 200, out
            outs[(merge, mode)] = out["choices"][0]
    plain, merged = outs[(False, "raw_logprobs")], outs[(True, "raw_logprobs")]
    processed = outs[(False, "processed_logprobs")]
    assert merged["token_ids"] == plain["token_ids"] == processed["token_ids"]
    raw = [e["logprob"] for e in plain["logprobs"]["content"]]
    assert [e["logprob"] for e in merged["logprobs"]["content"]] == pytest.approx(raw, abs=1e-5)
    # processed: tempered at 0.7 and renormalised over the top-p nucleus, so each sampled token
    # is at least as likely as under the raw distribution; the first token checked by hand
    proc = [e["logprob"] for e in processed["logprobs"]["content"]]
    assert all(p >= r - 1e-6 for p, r in zip(proc, raw, strict=True)) and proc != raw
    local = load_model(str(tiny_text_model))
    from peft import PeftModel

    from rmkit.models.chat import prepare_inputs

    model = PeftModel.from_pretrained(local.model, str(root / "a1")).eval()
    ids = prepare_inputs(local, [CONV])["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].float() / 0.7
    probs = torch.softmax(logits, dim=-1)
    sorted_p, order = probs.sort(descending=True)
    keep = sorted_p.cumsum(0) - sorted_p < 0.8  # the nucleus: tokens until 0.8 is reached
    nucleus = order[keep]
    first = plain["token_ids"][0]
    assert first in nucleus.tolist()
    expected = math.log(float(probs[first]) / float(probs[nucleus].sum()))
    assert proc[0] == pytest.approx(expected, abs=1e-4)
