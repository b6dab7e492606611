"""rmkit serve honours top_k and repetition_penalty (vLLM's sampling fields) and rejects bad
values with a 400 that names the field."""

from __future__ import annotations

import pytest
from tests.integration.serve._util import post as _post

from rmkit.generation.base import SamplingParams
from rmkit.generation.hf import HFBackend

CONV = [{"role": "user", "content": "Name a colour."}]


def _chat(srv, **kw):
    status, out, _ = _post(
        srv.url + "/chat/completions",
        {"messages": CONV, "max_tokens": 10, "return_token_ids": True, **kw},
    )
    assert status == 200, out
    return [c["token_ids"] for c in out["choices"]]


def test_top_k_1_equals_greedy(text_server):
    greedy = _chat(text_server, temperature=0)[0]
    assert _chat(text_server, n=3, temperature=1.5, top_k=1, seed=7) == [greedy] * 3
    # -1 and 0 are "off" (vLLM's values): the same as leaving it out
    plain = _chat(text_server, n=2, temperature=1.0, seed=7)
    assert _chat(text_server, n=2, temperature=1.0, seed=7, top_k=-1) == plain
    assert _chat(text_server, n=2, temperature=1.0, seed=7, top_k=0) == plain


def test_repetition_penalty_is_applied_as_locally(text_server, loaded_text):
    params = SamplingParams(temperature=0, max_new_tokens=10, repetition_penalty=1.6)
    local = HFBackend(loaded_text, batch_size=16).generate_detailed([CONV], params)[0][0]
    assert _chat(text_server, temperature=0, repetition_penalty=1.6) == [local.token_ids]
    assert _chat(text_server, temperature=0, repetition_penalty=1.0) == _chat(
        text_server, temperature=0
    )


@pytest.mark.parametrize(
    "field, value",
    [("top_k", -2), ("top_k", 1.5), ("top_k", "5"), ("repetition_penalty", 0),
     ("repetition_penalty", -1.0), ("repetition_penalty", 2.5), ("repetition_penalty", "1.1")],
)  # fmt: skip
def test_bad_values_are_400_naming_the_field(text_server, field, value):
    status, out, _ = _post(
        text_server.url + "/chat/completions", {"messages": CONV, "max_tokens": 4, field: value}
    )
    assert status == 400, out
    assert out["error"]["param"] == field and field in out["error"]["message"], out
