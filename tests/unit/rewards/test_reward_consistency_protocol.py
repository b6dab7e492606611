"""The consistency reward's two judge protocols (``rmkit`` and ``released``): the pure pieces
against hand-computed strings, and the requests against a local OpenAI-compatible server
(127.0.0.1, no network)."""

import logging
import threading

import pytest
from tests.helpers.openai_server import OpenAITestServer, last_user_text

from rmkit.errors import ConfigError, RmkitError
from rmkit.generation import make_backend
from rmkit.rewards import compose, consistency, make_sample
from rmkit.rewards.consistency import (
    JUDGE_INSTRUCTION,
    PROTOCOLS,
    RELEASED_INSTRUCTION,
    TIE_PHRASE,
    judge_settings,
    read_digit_reply,
    released_context,
    verdict_phrase,
)

REC = {"id": "c", "task": "text", "prompt": "Q?", "candidates": ["good", "bad"], "label": 0}


def sample(text: str, index: int = 0):
    return make_sample(REC, [0, 1], text, index=index)


def backend(srv, **kw):
    return make_backend(
        base_url=srv.url, api_model="test-model", api_key_env="RMKIT_TEST_NO_KEY", timeout=5.0,
        **kw,
    )  # fmt: skip


# ----------------------------------------------------------------------------- pure pieces


@pytest.mark.parametrize(
    "completion, last_lines, expected",
    [
        # before <answer>: "<think>a\n\nb\nc\n</think>\n" -> stripped "<think>a\n\nb\nc\n</think>"
        # -> ["<think>a", "", "b", "c", "</think>"] -> last 3
        ("<think>a\n\nb\nc\n</think>\n<answer>2</answer>", 3, "b;c;</think>"),
        # an empty line among the last three is kept (two ';' in a row)
        ("<think>x\ny\n\nz</think><answer>1</answer>", 3, "y;;z</think>"),
        # fewer lines than asked: all of them
        ("<think>only</think><answer>1</answer>", 3, "<think>only</think>"),
        # the first <answer> cuts, a later one is ignored
        ("<think>p\nq</think><answer>1</answer>\n<answer>2</answer>", 3, "<think>p;q</think>"),
        # no <answer> at all: the whole completion (stripped)
        ("  first\nsecond\nthird\nfourth\n\n", 3, "second;third;fourth"),
        # lines are split on \n only: a \r stays on its line
        ("a\r\nb<answer>1</answer>", 3, "a\r;b"),
        ("<think>a\nb\nc</think><answer>1</answer>", 1, "c</think>"),
    ],
)
def test_released_context(completion, last_lines, expected):
    assert released_context(completion, last_lines) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>t</think><answer>1</answer>", "response 1 is better"),
        ("<think>t</think><answer> 2\n</answer>", "response 2 is better"),
        ("<think>t</think><answer>3</answer>", TIE_PHRASE),  # any other integer: the tie phrase
        ("<think>t</think><answer>0</answer>", TIE_PHRASE),
        ("<think>t</think><answer>Image 1 is better</answer>", "Image 1 is better"),  # as is
        ("<think>t</think><answer>2</answer><answer>1</answer>", "response 2 is better"),
        ("<think>t</think><answer>2", "<think>t</think><answer>2"),  # unclosed: the whole text
        ("  no tags here \n", "no tags here"),
    ],
)
def test_verdict_phrase(completion, expected):
    assert verdict_phrase(completion) == expected


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("1", True),
        ("0", False),
        ("10", False),  # a '0' anywhere decides first
        ("1.0", False),
        ("Output: 1", True),
        ("They match, so 1.", True),
        ("They do not match", None),
        ("", None),
    ],
)
def test_read_digit_reply(reply, expected):
    assert read_digit_reply(reply) is expected


def test_judge_settings_defaults_overrides_and_errors():
    base = {"variant": "paper", "last_lines": 3}
    assert judge_settings() == {
        **base, "protocol": "rmkit", "temperature": 0.0, "max_new_tokens": 8, "attempts": 1,
        "max_chars": 1500,
    }  # fmt: skip
    assert judge_settings("released") == {
        **base, "protocol": "released", "temperature": 0.1, "max_new_tokens": 4096,
        "attempts": 3, "max_chars": None,
    }  # fmt: skip
    got = judge_settings("released", "signed", max_new_tokens=64, attempts=1, temperature=0)
    assert (got["max_new_tokens"], got["attempts"], got["temperature"]) == (64, 1, 0)
    with pytest.raises(ConfigError, match=r"protocol must be one of \('rmkit', 'released'\), "
                       r"got 'relased'"):  # fmt: skip
        judge_settings("relased")
    with pytest.raises(ConfigError, match="variant must be one of"):
        judge_settings("released", "sign")
    with pytest.raises(ConfigError, match="attempts must be an integer >= 1, got 0"):
        judge_settings("released", attempts=0)
    with pytest.raises(ConfigError, match="last_lines must be an integer >= 1"):
        judge_settings(last_lines=0)
    with pytest.raises(ConfigError, match="temperature must be a number >= 0"):
        judge_settings(temperature=-1)
    assert PROTOCOLS == ("rmkit", "released")


# ----------------------------------------------------------------------------- against a server


def test_released_protocol_request_and_reading():
    replies = {"alpha": "10", "beta": "Output: 1", "gamma": "0"}

    def judge(body):
        text = last_user_text(body)
        return next(r for key, r in replies.items() if key in text)

    completions = [
        "<think>alpha one\nResponse 1 is better.\n</think>\n<answer>1</answer>",
        "<think>beta\n\nResponse 2 wins</think><answer>2</answer>",
        "gamma, no tags at all",  # sent too: the released judge reads every completion
        "   ",  # blank: nothing to judge, not sent
    ]
    samples = [sample(c, i) for i, c in enumerate(completions)]
    with OpenAITestServer(judge) as srv:
        be = backend(srv)
        try:
            scores = consistency(samples, be, variant="signed", protocol="released")
        finally:
            be.close()
        requests = srv.chat_requests()
    # "10" -> '0' first -> inconsistent; "Output: 1" -> consistent; "0" -> inconsistent
    assert scores == [-1.0, 1.0, -1.0, 0.0]
    assert len(requests) == 3
    for r in requests:
        assert r.body["temperature"] == 0.1
        assert r.body["max_tokens"] == 4096
        assert "seed" not in r.body  # first attempt
    texts = {last_user_text(r.body) for r in requests}
    expected_alpha = RELEASED_INSTRUCTION.format(
        reasoning="<think>alpha one;Response 1 is better.;</think>", answer="response 1 is better"
    )
    expected_beta = RELEASED_INSTRUCTION.format(
        reasoning="<think>beta;;Response 2 wins</think>", answer="response 2 is better"
    )
    expected_gamma = RELEASED_INSTRUCTION.format(
        reasoning="gamma, no tags at all", answer="gamma, no tags at all"
    )
    assert texts == {expected_alpha, expected_beta, expected_gamma}


def test_rmkit_protocol_request_unchanged():
    with OpenAITestServer(lambda body: "yes") as srv:
        be = backend(srv)
        try:
            text = "<think>a\n\nb\nc\n</think>\n<answer>2</answer>"
            assert consistency([sample(text)], be) == [1.0]
        finally:
            be.close()
        (req,) = srv.chat_requests()
    assert req.body["temperature"] == 0.0 and req.body["max_tokens"] == 8
    assert "seed" not in req.body
    assert last_user_text(req.body) == JUDGE_INSTRUCTION.format(reasoning="a\nb\nc", answer="2")


def test_released_unreadable_reply_is_asked_again_with_a_seed():
    seen = []
    lock = threading.Lock()

    def judge(body):
        with lock:
            seen.append(body.get("seed"))
            return "I cannot tell." if len(seen) < 3 else "1"

    s = sample("<think>r</think><answer>1</answer>")
    with OpenAITestServer(judge) as srv:
        be = backend(srv)
        try:
            assert consistency([s], be, variant="signed", protocol="released") == [1.0]
        finally:
            be.close()
    assert seen == [None, 1, 2]  # 3 attempts, the later ones with seeds of their own


@pytest.mark.parametrize(
    "faults, expected, calls",
    [(["500", "500"], 1.0, 3), (["500", "500", "500"], 0.0, 3), (["500"], 1.0, 2)],
)
def test_released_failed_requests_are_attempts(faults, expected, calls, caplog):
    s = sample("<think>r</think><answer>1</answer>")
    with OpenAITestServer(lambda body: "1", faults=faults) as srv:
        be = backend(srv, max_retries=0, on_error="skip")
        try:
            with caplog.at_level(logging.WARNING, logger="rmkit.rewards.consistency"):
                got = consistency([s], be, variant="signed", protocol="released")
        finally:
            be.close()
        assert srv.count() == calls
    assert got == [expected]
    assert be.stats["failures"] == {"server_error": len(faults)}
    warned = [r.getMessage() for r in caplog.records if r.name == "rmkit.rewards.consistency"]
    if expected == 0.0:
        assert warned == [
            "consistency judge: 1 of 1 samples got no verdict in 3 attempt(s) (last attempt: "
            "0 replies were neither 1 nor 0, 1 requests failed); they score 0"
        ]
    else:
        assert warned == []


def test_released_client_error_raises_instead_of_scoring():
    s = sample("<think>r</think><answer>1</answer>")
    with OpenAITestServer(lambda body: "1", faults=["400"]) as srv:
        be = backend(srv, max_retries=0, on_error="skip")
        try:
            with pytest.raises(RmkitError, match="refused 1 of 1 request") as e:
                consistency([s], be, variant="signed", protocol="released")
        finally:
            be.close()
        assert srv.count() == 1  # not asked again
    assert "max_new_tokens (4096)" in e.value.hint


def test_released_through_compose_skips_failures_and_validates():
    with OpenAITestServer(lambda body: "1", faults=["500", "500"]) as srv:
        opts = {
            "base_url": srv.url, "api_model": "test-model", "api_key_env": "RMKIT_TEST_NO_KEY",
            "max_retries": 0, "protocol": "released", "variant": "signed",
            "max_new_tokens": 32,
        }  # fmt: skip
        reward = compose(
            [{"name": "format", "options": {"mode": "strict"}}, {"name": "accuracy"},
             {"name": "consistency", "options": opts}],
            combiner="r1",
        )  # fmt: skip
        try:
            out = reward([sample("<think>r</think><answer>1</answer>")])
        finally:
            reward.close()
        assert srv.count() == 3
        assert {r.body["max_tokens"] for r in srv.chat_requests()} == {32}
    assert out.components["consistency"] == [1.0]
    assert out.total == pytest.approx([0.5 + 1.0 * 1.5])
    with pytest.raises(ConfigError, match="got 'relased'"):
        compose([{"name": "consistency", "options": {"backend": object(), "protocol": "relased"}}])
    with pytest.raises(ConfigError, match="attempts must be"):
        compose([{"name": "consistency", "options": {"backend": object(), "attempts": 0}}])
