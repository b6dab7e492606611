"""``rmkit serve`` end to end: the real ``openai`` client against the server on tiny models.

The servers (``text_server`` on tiny-llama, ``vlm_server`` on tiny-qwen2.5-vl) come from this
folder's conftest. LoRA endpoints: test_serve_lora.py; HTTP hardening: test_serve_http.py.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
import torch
from tests.integration.serve._util import client as _client
from tests.integration.serve._util import png_data_url as _png_data_url
from tests.integration.serve._util import post as _post
from tests.integration.serve._util import sse_events

from rmkit.generation.base import SamplingParams
from rmkit.generation.hf import HFBackend
from rmkit.serve import build_app
from rmkit.serve.server import ModelServer
from rmkit.serve.worker import Job

KEY_ENV = "RMKIT_SERVE_TEST_KEY"
HI = [{"role": "user", "content": "Which response is better?"}]


def test_models_and_text_chat(text_server):
    client = _client(text_server)
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny-llama"] and models[0].owned_by == "rmkit"
    raw = client.chat.completions.with_raw_response.create(
        model="tiny-llama", messages=HI, max_tokens=6, temperature=0
    )
    timing = raw.headers["server-timing"]
    assert "gen;dur=" in timing and "queue;dur=" in timing
    r = raw.parse()
    assert r.object == "chat.completion" and len(r.choices) == 1
    c = r.choices[0]
    assert isinstance(c.message.content, str) and c.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 6 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = client.chat.completions.create(
        model="tiny-llama", messages=HI, max_tokens=6, temperature=0, n=3
    )
    assert [x.message.content for x in again.choices] == [c.message.content] * 3
    assert again.usage.prompt_tokens == r.usage.prompt_tokens
    status, health, _ = _post(text_server.url.removesuffix("/v1") + "/health", None, method="GET")
    assert status == 200 and health == {"status": "ok"}


def test_model_folder_is_an_alias_but_never_listed(text_server, loaded_text):
    client = _client(text_server)
    assert all("/" not in m.id for m in client.models.list().data)
    r = client.chat.completions.create(
        model=str(loaded_text.path), messages=HI, max_tokens=2, temperature=0
    )
    assert r.choices[0].finish_reason in ("stop", "length")


def test_sampling_n_seed_and_logprobs(text_server):
    client = _client(text_server)
    kw = dict(
        model="tiny-llama",
        messages=[{"role": "user", "content": "hi"}],
        max_completion_tokens=5,
        n=3,
        seed=9,
        temperature=1.0,
    )
    a = client.chat.completions.create(**kw, logprobs=True, top_logprobs=2)
    b = client.chat.completions.create(**kw)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len(a.choices) == 3 and len({c.message.content for c in a.choices}) > 1
    for c in a.choices:
        toks = c.logprobs.content
        assert len(toks) >= 1 and all(math.isfinite(t.logprob) and t.logprob <= 0 for t in toks)
        assert all(
            len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
            for t in toks
        )
    assert b.choices[0].logprobs is None


def test_seeded_request_equals_local_generation(text_server, loaded_text):
    """RL rollouts through the server must equal local HFBackend generation (same batch size)."""
    conv = [{"role": "user", "content": "Name a colour."}]
    params = SamplingParams(
        n=3, temperature=1.0, top_p=0.9, max_new_tokens=7, seed=11, logprobs=True
    )
    local = HFBackend(loaded_text, batch_size=16).generate_detailed([conv], params)[0]
    status, out, _ = _post(
        text_server.url + "/chat/completions",
        {"messages": conv, "n": 3, "temperature": 1.0, "top_p": 0.9, "max_tokens": 7,
         "seed": 11, "logprobs": True, "return_token_ids": True},
    )  # fmt: skip
    assert status == 200, out
    for choice, sample in zip(out["choices"], local, strict=True):
        assert choice["token_ids"] == sample.token_ids
        assert choice["message"]["content"] == sample.text
        lps = [e["logprob"] for e in choice["logprobs"]["content"]]
        assert lps == pytest.approx(sample.token_logprobs, abs=1e-6)


def test_return_token_ids(text_server, loaded_text):
    from rmkit.models.chat import prepare_inputs

    tok = loaded_text.tokenizer
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]
    r = _client(text_server).chat.completions.create(
        model="tiny-llama", messages=conv, max_tokens=8, temperature=0, n=2, logprobs=True,
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    body = r.model_dump()
    expected_prompt = prepare_inputs(loaded_text, [conv])["input_ids"][0].tolist()
    assert body["prompt_token_ids"] == expected_prompt
    assert r.usage.prompt_tokens == len(expected_prompt)
    local = HFBackend(loaded_text, batch_size=16).generate_detailed(
        [conv], SamplingParams(temperature=0, max_new_tokens=8, logprobs=True)
    )[0][0]
    for choice in body["choices"]:
        ids = choice["token_ids"]
        assert ids == local.token_ids
        assert tok.decode(ids, skip_special_tokens=True) == choice["message"]["content"]
        assert len(choice["logprobs"]["content"]) == len(ids)


def test_return_tokens_as_token_ids(text_server):
    status, out, _ = _post(
        text_server.url + "/chat/completions",
        {"messages": HI, "max_tokens": 4, "temperature": 0, "logprobs": True, "top_logprobs": 3,
         "return_tokens_as_token_ids": True, "return_token_ids": True},
    )  # fmt: skip
    assert status == 200, out
    choice = out["choices"][0]
    entries = choice["logprobs"]["content"]
    assert [e["token"] for e in entries] == [f"token_id:{t}" for t in choice["token_ids"]]
    for e in entries:
        assert len(e["top_logprobs"]) == 3
        assert all(alt["token"].startswith("token_id:") for alt in e["top_logprobs"])
        assert e["top_logprobs"][0]["logprob"] >= e["logprob"]


def _stream(srv, **kw):
    """(content per choice, token ids per choice, prompt ids, usage chunk, finish reasons)."""
    stream = _client(srv).chat.completions.create(stream=True, **kw)
    n = kw.get("n", 1)
    text, ids, finish = [""] * n, [[] for _ in range(n)], [None] * n
    prompt_ids, usage, roles = None, None, []
    for chunk in stream:
        extra = chunk.model_dump()
        if extra.get("prompt_token_ids") is not None:
            prompt_ids = extra["prompt_token_ids"]
        if not chunk.choices:
            usage = chunk.usage
            continue
        for c, raw in zip(chunk.choices, extra["choices"], strict=True):
            if c.delta.role:
                roles.append(c.index)
            text[c.index] += c.delta.content or ""
            ids[c.index] += raw.get("token_ids") or []
            finish[c.index] = c.finish_reason or finish[c.index]
    assert sorted(roles) == list(range(n))  # a first chunk with the role per choice
    return text, ids, prompt_ids, usage, finish


def test_streaming_text_equals_non_streamed(text_server):
    """Seeded sampling makes the answer repeatable, so the stream must give exactly it."""
    kw = dict(model="tiny-llama", messages=HI, max_tokens=16, temperature=1.0, seed=5, n=2)
    plain = _client(text_server).chat.completions.create(
        **kw, extra_body={"return_token_ids": True}
    )
    text, ids, prompt_ids, usage, finish = _stream(
        text_server, **kw, stream_options={"include_usage": True},
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    plain_body = plain.model_dump()
    assert text == [c.message.content for c in plain.choices] and len(set(text)) == 2
    assert ids == [c["token_ids"] for c in plain_body["choices"]]
    assert prompt_ids == plain_body["prompt_token_ids"]
    assert finish == [c.finish_reason for c in plain.choices]
    assert usage.prompt_tokens == plain.usage.prompt_tokens
    assert usage.completion_tokens == plain.usage.completion_tokens
    # a stop string from the middle of the answer: the text stops before it, streamed or not
    middle = text[0][len(text[0]) // 2 :][:3]
    stop_kw = {**kw, "stop": [middle]}
    plain = _client(text_server).chat.completions.create(**stop_kw)
    first = plain.choices[0]
    assert first.finish_reason == "stop" and first.message.content == text[0].split(middle)[0]
    stop_text, _, _, usage, finish = _stream(text_server, **stop_kw)
    assert stop_text == [c.message.content for c in plain.choices] and usage is None
    assert finish == [c.finish_reason for c in plain.choices]
    # greedy with n > 1: one sample streamed to every choice
    greedy = {**kw, "temperature": 0, "seed": None}
    plain = _client(text_server).chat.completions.create(**greedy)
    text, *_ = _stream(text_server, **greedy)
    assert text == [c.message.content for c in plain.choices]


def test_streaming_with_logprobs_sends_them_per_token(text_server):
    kw = dict(model="tiny-llama", messages=HI, max_tokens=8, seed=3, logprobs=True, top_logprobs=2)
    plain = _client(text_server).chat.completions.create(**kw)
    stream = _client(text_server).chat.completions.create(stream=True, **kw)
    entries, text = [], ""
    for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            entries += c.logprobs.content if c.logprobs else []
    assert text == plain.choices[0].message.content
    assert [e.logprob for e in entries] == [e.logprob for e in plain.choices[0].logprobs.content]
    assert [e.top_logprobs for e in entries] == [
        e.top_logprobs for e in plain.choices[0].logprobs.content
    ]


def test_streaming_raw_events(text_server):
    """The wire format itself: chunk objects, a final finish_reason, then [DONE]."""
    import urllib.request as u

    req = u.Request(
        text_server.url + "/chat/completions",
        data=b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": true}',
        headers={"Content-Type": "application/json"},
    )
    with u.urlopen(req, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert "queue;dur=" in r.headers["server-timing"]
        events = sse_events(r.read())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_image_message_with_data_url(vlm_server):
    client = _client(vlm_server)
    content = [
        {"type": "image_url", "image_url": {"url": _png_data_url()}},
        {"type": "text", "text": "What is shown?"},
    ]
    kw = dict(model="tiny-qwen2.5-vl", max_tokens=4, temperature=0)
    r = client.chat.completions.create(messages=[{"role": "user", "content": content}], **kw)
    assert isinstance(r.choices[0].message.content, str)
    plain = client.chat.completions.create(
        messages=[{"role": "user", "content": "What is shown?"}], **kw
    )
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens  # the image became image tokens
    text, *_ = _stream(vlm_server, messages=[{"role": "user", "content": content}], **kw)
    assert text == [r.choices[0].message.content]


def _manual_scores(loaded, messages, conts):
    """Independent check: one forward pass per continuation, no padding tricks."""
    from rmkit.models.chat import prepare_inputs

    prompt = prepare_inputs(loaded, [messages])["input_ids"][0].tolist()
    shared = 0
    while all(len(c) > shared for c in conts) and len({c[shared] for c in conts}) == 1:
        shared += 1
    out = []
    for cont in conts:
        ids = torch.tensor([prompt + cont])
        with torch.no_grad():
            logp = torch.log_softmax(loaded.model(input_ids=ids).logits[0].float(), dim=-1)
        out.append(sum(float(logp[len(prompt) + j - 1, cont[j]]) for j in range(shared, len(cont))))
    return out


def test_score_endpoint_text(text_server, loaded_text):
    from rmkit.prompts import render_judge_messages
    from rmkit.serve.score import softmax

    body = {"prompt": "What is 2 + 2?", "candidates": ["4", "5", "22"]}
    status, out, headers = _post(text_server.url + "/score", body)
    assert status == 200, out
    assert "gen;dur=" in headers["server-timing"]
    probs = out["probabilities"]
    assert len(probs) == 3 and sum(probs) == pytest.approx(1.0, abs=1e-6)
    assert out["verdict"] == max(range(3), key=probs.__getitem__) and out["probability"] == max(
        probs
    )
    assert out["answers"] == ["1", "2", "3"] and out["prefix"] == "<think></think><answer>"
    record = {
        "id": "score-request",
        "task": "text",
        "prompt": body["prompt"],
        "candidates": body["candidates"],
        "images": [],
    }
    msgs = render_judge_messages(record, [0, 1, 2])
    tok = loaded_text.tokenizer
    conts = [
        tok(f"<think></think><answer>{a}</answer>", add_special_tokens=False)["input_ids"]
        for a in "123"
    ]
    assert probs == pytest.approx(softmax(_manual_scores(loaded_text, msgs, conts)), abs=1e-4)
    # shown order [2, 0, 1]: probabilities are still reported per candidate
    status, swapped, _ = _post(
        text_server.url + "/score",
        {**body, "order": [2, 0, 1], "reasoning": True, "max_reasoning_tokens": 4},
    )
    assert status == 200 and sum(swapped["probabilities"]) == pytest.approx(1.0, abs=1e-6)
    assert (
        swapped["method"] == "answer-likelihood+reasoning"
        and swapped["usage"]["completion_tokens"] <= 4
    )


def test_score_endpoint_with_image(vlm_server):
    body = {
        "prompt": "Which caption fits?",
        "images": [_png_data_url((0, 0, 255))],
        "candidates": ["a blue square", "a red cat"],
    }
    status, out, _ = _post(vlm_server.url + "/score", body)
    assert status == 200, out
    assert sum(out["probabilities"]) == pytest.approx(1.0, abs=1e-6) and out["verdict"] in (0, 1)


def test_score_limits(text_server, tmp_path, monkeypatch):
    url = text_server.url + "/score"
    (tmp_path / "k8s-secret.yaml").write_text("---\nname: x\nkind: Secret\n---\nbody\n")
    monkeypatch.chdir(tmp_path)  # a file in the working folder is never opened as a template
    for template in ("k8s-secret.yaml", "../x", "a\\b", "nope"):
        status, out, _ = _post(url, {"prompt": "p", "candidates": ["a", "b"], "template": template})
        assert status == 400 and out["error"]["param"] == "template", out
        assert str(tmp_path) not in out["error"]["message"]
    status, out, _ = _post(url, {"prompt": "p", "candidates": [str(i) for i in range(27)]})
    assert status == 400 and out["error"]["param"] == "candidates"
    status, out, _ = _post(url, {"prompt": "p", "candidates": ["only one"]})
    assert status == 400 and out["error"]["param"] == "candidates"
    long = " ".join(["word"] * 1500)  # about 4,500 tokens: beyond the 4,096-token context
    status, out, _ = _post(url, {"prompt": long, "candidates": ["a", "b"]})
    assert status == 400 and out["error"]["code"] == "context_length_exceeded", out
    # 16 candidates, a judge prompt of about 2,700 tokens: scored with the prompt run once (its
    # memory does not grow with candidates x prompt; see test_serve_findings.py, H1)
    cands = [" ".join(["word"] * 45)] * 16
    status, out, _ = _post(url, {"prompt": "p", "candidates": cands})
    assert status == 200 and len(out["probabilities"]) == 16, out


def test_request_errors(text_server, vlm_server):
    url = text_server.url
    msgs = [{"role": "user", "content": "hi"}]
    status, out, _ = _post(
        url + "/chat/completions", {"model": "tiny-llama", "messages": msgs, "temperature": 5}
    )
    assert status == 400 and out["error"] == {
        "message": out["error"]["message"],
        "type": "invalid_request_error",
        "param": "temperature",
        "code": None,
    }
    for body, param in [
        ({"messages": msgs, "n": "2"}, "n"),
        ({"messages": msgs, "logprobs": "yes"}, "logprobs"),
        ({"messages": msgs, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": msgs, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "x"}]}]}, "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0]"),
        ({"messages": []}, "messages"),
        ({"model": "tiny-llama"}, "messages"),
        ({"messages": msgs, "max_tokens": 5000}, "max_tokens"),
        ({"messages": msgs, "frequency_penalty": 0.5}, "frequency_penalty"),
        ({"messages": msgs, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": msgs, "n": 64, "max_tokens": 4096, "logprobs": True, "top_logprobs": 20},
         "top_logprobs"),
    ]:  # fmt: skip
        status, out, _ = _post(url + "/chat/completions", body)
        assert status == 400 and out["error"]["param"] == param, (body, out)
    status, out, _ = _post(url + "/chat/completions", {"model": "other", "messages": msgs})
    assert status == 404 and out["error"]["code"] == "model_not_found"
    remote = [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]
    status, out, _ = _post(
        vlm_server.url + "/chat/completions", {"messages": [{"role": "user", "content": remote}]}
    )
    assert status == 400 and "data URL" in out["error"]["message"]
    image_msg = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": _png_data_url()}}]}
    ]
    status, out, _ = _post(url + "/chat/completions", {"messages": image_msg})
    assert status == 400 and "text only" in out["error"]["message"]  # a text model gets an image
    # a decompression bomb: refused from its header, before decoding
    bomb = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _png_data_url(0, (5000, 5000), "1")}}]}]  # fmt: skip
    status, out, _ = _post(vlm_server.url + "/chat/completions", {"messages": bomb})
    assert status == 400 and out["error"]["param"] == "messages[0].content[0]", out
    # a prompt beyond the model's context (4096 tokens) with an explicit max_tokens
    long = [{"role": "user", "content": " ".join(["cat"] * 4200)}]
    status, out, _ = _post(url + "/chat/completions", {"messages": long, "max_tokens": 8})
    assert status == 400 and out["error"]["code"] == "context_length_exceeded", out
    status, out, _ = _post(url + "/nothing", {})
    assert status == 404 and out["error"]["type"] == "invalid_request_error"


def test_oversize_request_is_413(text_server):
    client = _client(text_server)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "x" * 100_000}], max_tokens=2
        )
    assert err.value.status_code == 413
    # the server is still fine afterwards
    assert client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    ).choices


def test_api_key_required(loaded_text, monkeypatch, caplog):
    secret = "serve-secret-key-0123"
    monkeypatch.setenv(KEY_ENV, secret)
    caplog.set_level("DEBUG", logger="rmkit")
    app = build_app("tiny-llama", loaded=loaded_text, device="cpu", api_key_env=KEY_ENV)
    with ModelServer(app, "127.0.0.1", 0) as srv:
        with pytest.raises(openai.AuthenticationError) as err:
            _client(srv, "wrong").models.list()
        assert err.value.status_code == 401
        status, out, headers = _post(srv.url + "/chat/completions", {"messages": HI})
        assert status == 401 and out["error"]["code"] == "invalid_api_key"
        assert headers["www-authenticate"] == "Bearer"
        r = _client(srv, secret).chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert r.choices
        # the scheme is case-insensitive (RFC 7235)
        status, out, _ = _post(
            srv.url + "/chat/completions",
            {"messages": HI, "max_tokens": 2},
            {"Authorization": f"bearer {secret}"},
        )
        assert status == 200, out
        status, _, _ = _post(srv.url.removesuffix("/v1") + "/health", None, method="GET")
        assert status == 200  # health checks need no key
    assert secret not in caplog.text and "/v1/chat/completions" in caplog.text
    monkeypatch.delenv(KEY_ENV)
    from rmkit.errors import RmkitError

    with pytest.raises(RmkitError, match=KEY_ENV):
        build_app("tiny-llama", loaded=loaded_text, device="cpu", api_key_env=KEY_ENV)


def test_concurrent_requests_are_all_answered(text_server):
    client = _client(text_server)
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        r = client.chat.completions.create(
            model="tiny-llama",
            messages=[{"role": "user", "content": f"q{i}"}],
            max_tokens=3,
            seed=i,
        )
        results[i] = r.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == list(range(8))


def test_concurrent_unseeded_requests_share_one_batch(text_server):
    """Requests queued while the model is busy are generated together in one call, and each
    client gets its own valid answer (greedy answers equal those of requests sent alone)."""
    engine = text_server.app.state.engine
    client = _client(text_server)
    prompts = [f"Question number {i}?" for i in range(6)]

    def ask(i: int, **kw) -> dict:
        r = client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": prompts[i]}],
            max_tokens=5, temperature=0, logprobs=True, extra_body={"return_token_ids": True},
            **kw,
        )  # fmt: skip
        return r.model_dump()

    alone = [ask(i) for i in range(len(prompts))]
    gate, taken = threading.Event(), threading.Event()
    engine.worker.submit(Job("call", lambda: (taken.set(), gate.wait(30))))
    assert taken.wait(30)  # the worker is busy: what arrives now queues up
    results: dict[int, dict] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, ask(i)))
        for i in range(len(prompts))
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while engine.worker.queued < len(prompts) and time.monotonic() < deadline:
        time.sleep(0.01)
    calls = engine.backend.stats["calls"]
    gate.set()
    for t in threads:
        t.join(timeout=60)
    assert engine.backend.stats["calls"] == calls + 1  # one generate call for all six
    for i in range(len(prompts)):
        got, want = results[i]["choices"][0], alone[i]["choices"][0]
        assert results[i]["prompt_token_ids"] == alone[i]["prompt_token_ids"]
        assert got["token_ids"] == want["token_ids"] and got["message"] == want["message"]
        lps = [e["logprob"] for e in got["logprobs"]["content"]]
        assert lps == pytest.approx([e["logprob"] for e in want["logprobs"]["content"]], abs=1e-4)


def test_serve_forever_stops_cleanly_on_sigterm(loaded_text, caplog):
    """In-process: serve_forever in the main thread, a client thread, then SIGTERM to ourselves."""
    from rmkit.serve.server import serve_forever

    caplog.set_level("INFO", logger="rmkit")
    server = ModelServer(build_app("tiny-llama", loaded=loaded_text, device="cpu"), "127.0.0.1", 0)
    answers: list[str] = []

    def client_then_sigterm() -> None:
        try:
            client = _client(server)
            for _ in range(100):  # wait until serving (at most ~10 s)
                try:
                    client.models.list()
                    break
                except openai.APIConnectionError:
                    time.sleep(0.1)
            r = client.chat.completions.create(
                model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            answers.append(r.choices[0].finish_reason)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=client_then_sigterm)
    thread.start()
    serve_forever(server)  # returns once SIGTERM arrives
    thread.join(timeout=30)
    assert answers and answers[0] in ("stop", "length")
    assert "serving tiny-llama at http://127.0.0.1:" in caplog.text
    assert "received SIGTERM" in caplog.text and "server stopped" in caplog.text
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url + "/models", timeout=2)


@pytest.mark.slow
def test_cli_serve_subprocess_and_sigterm(loaded_text):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RMKIT_NO_PROGRESS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "rmkit",
        "serve",
        str(loaded_text.path),
        "--port",
        "0",
        "--device",
        "cpu",
        "--served-model-name",
        "policy",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url, lines = None, []
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if " at http://" in line:
                url = line.split(" at ", 1)[1].split()[0]
        assert url, "".join(lines)
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["policy"]
        r = client.chat.completions.create(
            model=str(loaded_text.path), messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert r.choices[0].finish_reason in ("stop", "length")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        rest = proc.stderr.read()
        assert "shutting down" in rest and "server stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
