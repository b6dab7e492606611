"""Consistency reward against a local OpenAI-compatible judge server (127.0.0.1, no network)."""

import re

import pytest
from tests.helpers.openai_server import OpenAITestServer, last_user_text

from rmkit.errors import ConfigError, RmkitError
from rmkit.generation import make_backend
from rmkit.rewards import compose, consistency, make_sample, read_agreement, reasoning_tail

REC = {"id": "c", "task": "text", "prompt": "Q?", "candidates": ["good", "bad"], "label": 0}


def judge(body: dict) -> str:
    """Agree when the reasoning's last line names the same response as the final answer."""
    text = last_user_text(body)
    if "hesitant" in text:
        return "Hmm, hard to say."
    said = re.findall(r"Response (\d) is better", text)
    answer = re.search(r"final answer: (\S+)", text).group(1)
    return "Yes." if said and said[-1] == answer else "No"


def samples():
    outs = [
        "<think>Line one.\nResponse 2 is weak.\nResponse 1 is better</think><answer>1</answer>",  # agree
        "<think>Response 1 is better</think><answer>2</answer>",  # disagree
        "<think>I am hesitant.</think><answer>1</answer>",  # unreadable reply
        "no reasoning at all <answer>1</answer>",  # nothing to judge: never sent
    ]
    return [make_sample(REC, [0, 1], o, index=i) for i, o in enumerate(outs)]


def backend(srv):
    return make_backend(
        base_url=srv.url, api_model="test-model", api_key_env="RMKIT_TEST_NO_KEY", timeout=5.0
    )


def test_read_agreement_and_tail():
    assert read_agreement("Yes.") is True
    assert read_agreement("no") is False
    assert read_agreement("No, although yes in part") is False  # both words: the first decides
    assert read_agreement("Not sure") is None
    assert reasoning_tail("a\n\nb\nc\nd", last_lines=2) == "c\nd"
    assert reasoning_tail("x" * 50, last_lines=3, max_chars=10) == "x" * 10


@pytest.mark.parametrize(
    "variant, expected", [("paper", [1.0, 0.0, 0.0, 0.0]), ("signed", [1.0, -1.0, 0.0, 0.0])]
)
def test_consistency_variants_against_local_judge(variant, expected):
    with OpenAITestServer(judge) as srv:
        be = backend(srv)
        try:
            assert consistency(samples(), be, variant=variant, last_lines=2) == expected
        finally:
            be.close()
        assert srv.count() == 3  # the sample without <think> was not sent
        # requests run concurrently, so find the first sample's by its content, not its position
        texts = [last_user_text(r.body) for r in srv.chat_requests()]
        first = [t for t in texts if "Response 2 is weak." in t]
        assert len(first) == 1
        assert "Response 1 is better" in first[0] and "Line one." not in first[0]  # last 2 lines
        assert all(r.body["temperature"] == 0.0 for r in srv.chat_requests())


def test_consistency_through_compose_builds_and_closes_its_backend():
    with OpenAITestServer(judge) as srv:
        reward = compose(
            [
                {"name": "format", "options": {"mode": "strict"}},
                {"name": "accuracy"},
                {
                    "name": "consistency",
                    "options": {
                        "base_url": srv.url,
                        "api_model": "test-model",
                        "api_key_env": "RMKIT_TEST_NO_KEY",
                    },
                },
            ],  # fmt: skip
            combiner="r1",
        )
        out = reward(samples())
        reward.close()
    # format: 1, 1, 1, 0 ; accuracy (label shown first -> "1"): 1, 0, 1, 1 ; consistency 1, 0, 0, 0
    # totals: 0.5 + 1*1.5 = 2.0 ; 0.5 + 0 = 0.5 ; 0.5 + 1*1 = 1.5 ; 0 + 1*1 = 1.0
    assert out.components["consistency"] == [1.0, 0.0, 0.0, 0.0]
    assert out.total == pytest.approx([2.0, 0.5, 1.5, 1.0])


def test_consistency_misconfiguration():
    with pytest.raises(RmkitError, match="variant"):
        consistency(samples(), object(), variant="strict")
    with pytest.raises(RmkitError, match="needs a judge backend"):
        consistency(samples(), None)
    with pytest.raises(ConfigError, match="unknown option"):
        compose([{"name": "consistency", "options": {"backend": object(), "judge": "x"}}])
