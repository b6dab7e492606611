"""Pure parts of ``rmkit serve``: request validation and conversion, the scoring math, the
answer prefix, streamed text release and chunk building."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from rmkit.errors import RmkitError
from rmkit.prompts import get_template
from rmkit.serve import protocol as P
from rmkit.serve import responses as R
from rmkit.serve.score import answer_prefix, common_prefix_len, softmax


def _png(size=(4, 4)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, format="PNG")
    return buf.getvalue()


def _url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _chat(**body) -> P.ChatCompletionRequest:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return P.ChatCompletionRequest.model_validate(body)


def _error(model, body) -> P.ApiError:
    try:
        model.model_validate(body)
    except ValidationError as e:
        return P.validation_error(e.errors())
    except P.ApiError as e:
        return e
    raise AssertionError("no error")


def test_softmax_and_common_prefix():
    assert softmax([math.log(1), math.log(3)]) == pytest.approx([0.25, 0.75])
    assert softmax([-1000.0, -1000.0, -1000.0]) == pytest.approx([1 / 3] * 3)  # no underflow
    assert softmax([]) == []
    assert common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_len([[5, 1], [6, 1]]) == 0 and common_prefix_len([[1, 2], [1, 2]]) == 2


def test_answer_prefix_per_template():
    assert answer_prefix(get_template("default"), "text", None) == "<think></think><answer>"
    assert (
        answer_prefix(get_template("default"), "text", "<think>B is wrong.")
        == "<think>B is wrong.</think><answer>"
    )
    assert (
        answer_prefix(get_template("default"), "text", "B is wrong.")
        == "<think>B is wrong.</think><answer>"
    )
    msrl = get_template("msrl")
    assert answer_prefix(msrl, "image_understanding", None) == (
        "<type>image understanding</type><think></think><answer>"
    )
    assert answer_prefix(get_template("msrl-caption"), "text", None).startswith(
        "<type>text</type><caption></caption>"
    )
    with pytest.raises(RmkitError, match="answer"):
        answer_prefix(get_template("mm-rewardbench"), "text", None)


def test_sampling_params_defaults_and_fields():
    params, top, explicit = P.sampling_params(_chat())
    assert (params.n, params.temperature, params.top_p, params.max_new_tokens, top) == (
        1, 1.0, 1.0, 256, 0,
    )  # fmt: skip
    assert params.seed is None and not params.logprobs and not explicit
    params, top, explicit = P.sampling_params(
        _chat(max_tokens=9, max_completion_tokens=7, stop="###", seed=3, logprobs=True,
              top_logprobs=2, n=4, temperature=0)
    )  # fmt: skip
    assert (params.max_new_tokens, params.stop, params.seed, top, params.n) == (
        7,
        ("###",),
        3,
        2,
        4,
    )
    assert params.greedy and explicit


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"max_tokens": 5000}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"n": True}, "n"),  # strict: a boolean is not a number
        ({"n": "2"}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": ""}, "stop"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"seed": 2**64}, "seed"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
         "messages[0].content[0].text"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
         "messages[0].content[0]"),
        ({"stream_options": {"include_usage": "x"}}, "stream_options.include_usage"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)  # fmt: skip
def test_chat_request_errors_name_the_field(body, param):
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    err = _error(P.ChatCompletionRequest, body)
    assert err.status == 400 and err.param == param and err.kind == "invalid_request_error"


def test_cross_field_checks():
    for req, param in [
        (_chat(top_logprobs=2), "top_logprobs"),
        (_chat(stream_options={"include_usage": True}), "stream_options"),
        (_chat(n=64, max_tokens=4096, logprobs=True, top_logprobs=20), "top_logprobs"),
    ]:
        with pytest.raises(P.ApiError) as err:
            P.sampling_params(req)
        assert err.value.param == param
    # neutral values of unsupported fields and unknown fields are fine
    _chat(frequency_penalty=0, tools=[], user="someone", stream=True, return_token_ids=True)


def test_validation_error_on_a_non_object_body():
    err = _error(P.ChatCompletionRequest, [1, 2])
    assert err.status == 400 and err.param is None and "JSON object" in err.message


def test_convert_messages_saves_data_url_images(tmp_path):
    data = _png()
    req = _chat(
        messages=[
            {"role": "developer", "content": "be fair"},
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": _url(data)}},
                {"type": "image_url", "image_url": _url(data)},
            ]},
        ]
    )  # fmt: skip
    out = P.convert_messages(req.messages, P.ImageStore(tmp_path), is_vision=True)
    assert out[0] == {"role": "system", "content": "be fair"}
    part = out[1]["content"][1]
    assert part["type"] == "image" and part["image"].endswith(".png")
    assert Path(part["image"]).read_bytes() == data and out[1]["content"][2]["type"] == "image"
    with pytest.raises(P.ApiError, match="text only") as err:
        P.convert_messages(req.messages, P.ImageStore(tmp_path), is_vision=False)
    assert err.value.param == "messages[1].content[1]"
    remote = _chat(
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}]
    )  # fmt: skip
    with pytest.raises(P.ApiError, match="data URL"):
        P.convert_messages(remote.messages, P.ImageStore(tmp_path), is_vision=True)


def test_image_limits_are_checked_from_the_header(tmp_path):
    store = P.ImageStore(tmp_path)
    with pytest.raises(P.ApiError, match="pixels") as err:
        store.save(_url(_png((5000, 4000))), "images[0]")
    assert err.value.param == "images[0]" and not list(tmp_path.iterdir())
    with pytest.raises(P.ApiError, match="not a readable image"):
        store.save(_url(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16), "images[0]")
    for i in range(P.MAX_IMAGES):
        store.save(_url(_png()), f"images[{i}]")
    with pytest.raises(P.ApiError, match="at most"):
        store.save(_url(_png()), "images[9]")


def test_score_inputs(tmp_path):
    url = _url(_png())
    req = P.ScoreRequest.model_validate({"prompt": "p", "candidates": ["a", "b"], "images": [url]})
    out = P.score_inputs(req, P.ImageStore(tmp_path), is_vision=True)
    rec = out["record"]
    assert rec["task"] == "image_understanding" and len(rec["images"]) == 1
    assert out["order"] == [0, 1] and out["template"] == "default" and out["reasoning"] is False
    for body, field in [
        ({"prompt": "p", "candidates": ["a"]}, "candidates"),
        ({"prompt": "p", "candidates": ["a"] * 17}, "candidates"),
        ({"prompt": "", "candidates": ["a", "b"]}, "prompt"),
        ({"prompt": "p", "candidates": ["a", " "]}, "candidates[1]"),
        ({"prompt": "p", "candidates": ["a", "b"], "order": [0, 0]}, "order"),
        ({"prompt": "p", "candidates": ["a", "b"], "template": "../x"}, "template"),
        ({"prompt": "p", "candidates": ["a", "b"], "template": "notes.yaml"}, "template"),
        ({"prompt": "p", "candidates": ["a", "b"], "task": "poetry"}, "task"),
        ({"prompt": "p", "candidates": ["a", "b"], "images": [url]}, "images"),  # text model
    ]:
        try:
            req = P.ScoreRequest.model_validate(body)
            P.score_inputs(req, P.ImageStore(tmp_path), is_vision=False)
        except ValidationError as e:
            err = P.validation_error(e.errors())
        except P.ApiError as e:
            err = e
        else:
            raise AssertionError(body)
        assert err.param == field, (body, err.message)


# ---------------------------------------------------------------------------- responses


class _Tok:
    """A tokenizer whose token i decodes to VOCAB[i]; 9 is a special token (decodes to "")."""

    VOCAB = ["He", "llo", " wor", "ld", "!", " ", "\n", "\u00e9", "END", ""]
    clean_up_tokenization_spaces = False

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.VOCAB[i] for i in ids)


def _release(live: R.LiveText, tokens: list[int]) -> list[str]:
    return [live.push(t)[0] for t in tokens]


def test_live_text_releases_text_as_it_becomes_final():
    live = R.LiveText(_Tok(), (), {8})
    assert _release(live, [0, 1, 2, 3]) == ["He", "llo", " wor", "ld"]
    assert live.push(8) == ("", []) and live.closed  # the end-of-turn token ends the live part
    sample = SimpleNamespace(text="Hello world", token_ids=[0, 1, 2, 3, 8])
    assert live.finish(sample) == ("", [8])


def test_live_text_holds_back_what_a_stop_string_may_still_cut():
    live = R.LiveText(_Tok(), ("wor",), {8})  # window: 3 + 8 tokens are held back
    deltas = [live.push(t) for t in [0, 1, 2, 3, 4] + [5] * 12]
    sent = "".join(d for d, _ in deltas)
    assert sent == "Hello " and live.closed  # found "wor": nothing from it on is sent
    assert sum(len(ids) for _, ids in deltas) == live.sent_ids == 3  # " wor" completed it
    final = SimpleNamespace(text="Hello ", token_ids=[0, 1, 2])
    assert live.finish(final) == ("", [])


def test_chunk_stream_events():
    opts = P.ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "hi"}], "stream": True, "return_token_ids": True,
         "stream_options": {"include_usage": True}}
    )  # fmt: skip
    tok = _Tok()
    stream = R.ChunkStream("m", 1, tok, opts, [R.LiveText(tok, (), {8})])
    events = [*stream.start([7, 7]), *stream.tokens(0, 0), *stream.tokens(0, 1)]
    sample = SimpleNamespace(
        text="Hello!", token_ids=[0, 1, 4, 8], finish_reason="stop", token_logprobs=None
    )
    events += stream.finish([sample]) + [stream.done()]
    import json

    bodies = [json.loads(e[len(b"data: ") :]) for e in events[:-1]]
    assert bodies[0]["prompt_token_ids"] == [7, 7]
    assert bodies[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(b["choices"][0]["delta"]["content"] for b in bodies[:-1])
    ids = [i for b in bodies[:-1] for i in b["choices"][0].get("token_ids") or []]
    assert content == "Hello!" and ids == [0, 1, 4, 8]
    assert bodies[-2]["choices"][0]["finish_reason"] == "stop"
    assert bodies[-1]["choices"] == [] and bodies[-1]["usage"]["completion_tokens"] == 4
    assert events[-1] == b"data: [DONE]\n\n"


def test_token_entries_and_logprob_floor():
    tok = _Tok()
    entry = R.token_entry(tok, 7, float("-inf"), as_id=True)
    assert entry == {"token": "token_id:7", "logprob": -9999.0, "bytes": list("\u00e9".encode())}
    assert R.token_entry(tok, 0, -0.5, as_id=False)["token"] == "He"
