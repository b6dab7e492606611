"""Explicit sampling controls: ``top_k`` and ``repetition_penalty`` in SamplingParams, on the
wire (OpenAI-compatible and token-server backends) and in the local backend, which never takes
them from the checkpoint's ``generation_config.json``."""

from __future__ import annotations

import json
import logging
import math
import shutil

import orjson
import pytest
import torch
from tests.helpers.openai_server import OpenAITestServer

from rmkit.errors import RmkitError
from rmkit.generation.base import SamplingParams
from rmkit.generation.config import BackendConfig
from rmkit.generation.hf import HFBackend, checkpoint_sampling_note, log_checkpoint_sampling
from rmkit.generation.openai_wire import request_body, request_bytes, sampling_extras
from rmkit.generation.steps import RepetitionPenalty
from rmkit.generation.token_server import TokenServerBackend

CONVS = [
    [{"role": "user", "content": "Which response is better?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say one word."}],
]
HI = [{"role": "user", "content": "hi"}]


# ----------------------------------------------------------------------------- SamplingParams


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.0}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": -1.1}, "repetition_penalty"),
        ({"repetition_penalty": math.nan}, "repetition_penalty"),
        ({"repetition_penalty": "1.1"}, "repetition_penalty"),
    ],
)
def test_invalid_values_name_the_field(kw, name):
    with pytest.raises(RmkitError, match=f"'{name}'"):
        SamplingParams(**kw)


def test_defaults_are_neutral_and_stay_out_of_cache_keys():
    p = SamplingParams()
    assert (p.top_k, p.repetition_penalty) == (0, 1.0)
    # the same key as before the fields existed: caches written then still answer
    assert "top_k" not in p.key_fields() and "repetition_penalty" not in p.key_fields()
    k = SamplingParams(top_k=50, repetition_penalty=1.05).key_fields()
    assert (k["top_k"], k["repetition_penalty"]) == (50, 1.05)
    # greedy: top-k cannot change the answer, the penalty can
    g = SamplingParams(temperature=0, top_k=50, repetition_penalty=1.05).key_fields()
    assert "top_k" not in g and g["repetition_penalty"] == 1.05
    assert g != SamplingParams(temperature=0).key_fields()


# ----------------------------------------------------------------------------- the wire


def test_openai_fields_only_when_set_unless_explicit():
    assert sampling_extras(SamplingParams(), explicit=False) == {}
    assert sampling_extras(SamplingParams(), explicit=True) == {
        "top_k": -1,
        "repetition_penalty": 1.0,
    }
    assert sampling_extras(SamplingParams(top_k=50), False) == {"top_k": 50}
    assert sampling_extras(SamplingParams(repetition_penalty=1.05), False) == {
        "repetition_penalty": 1.05
    }
    greedy = SamplingParams(temperature=0, top_k=50, repetition_penalty=1.1)
    assert sampling_extras(greedy, True) == {"repetition_penalty": 1.1}
    body = request_body("m", HI, SamplingParams(top_k=5, seed=1), 0, explicit_sampling=True)
    assert (body["top_k"], body["repetition_penalty"]) == (5, 1.0)
    # the serialised body is the same object
    from rmkit.generation.openai_wire import encode_messages

    raw = request_bytes(
        "m", encode_messages(HI), SamplingParams(top_k=5, seed=1), 0, "max_tokens", True
    )
    assert orjson.loads(raw) == body


def test_explicit_sampling_defaults_to_launched_servers_only():
    api = {"base_url": "http://127.0.0.1:9/v1", "api_model": "m"}
    assert not BackendConfig(**api).sends_explicit_sampling
    assert BackendConfig(**api, explicit_sampling=True).sends_explicit_sampling
    assert BackendConfig(**api).backend_kwargs()["explicit_sampling"] is False
    launched = BackendConfig(model="tiny-llama", launch={"kind": "rmkit"})
    assert launched.sends_explicit_sampling
    assert not BackendConfig(
        model="tiny-llama", launch={"kind": "vllm"}, explicit_sampling=False
    ).sends_explicit_sampling


def test_openai_backend_sends_them_as_configured():
    from rmkit.generation import make_backend

    with OpenAITestServer(respond=lambda req: "1") as srv:
        for explicit, params, want in [
            (False, SamplingParams(max_new_tokens=4), {}),
            (False, SamplingParams(max_new_tokens=4, top_k=50), {"top_k": 50}),
            (True, SamplingParams(max_new_tokens=4), {"top_k": -1, "repetition_penalty": 1.0}),
            (True, SamplingParams(max_new_tokens=4, repetition_penalty=1.2), {
                "top_k": -1, "repetition_penalty": 1.2,
            }),
        ]:  # fmt: skip
            backend = make_backend(
                base_url=srv.url, api_model="test-model", explicit_sampling=explicit
            )
            try:
                backend.generate([HI], params)
            finally:
                backend.close()
            sent = srv.chat_requests()[-1].body
            got = {k: sent[k] for k in ("top_k", "repetition_penalty") if k in sent}
            assert got == want, (explicit, params)


def _token_answer(req: dict) -> dict:
    n = req.get("n", 1)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": "ok"},
            "finish_reason": "stop",
            "token_ids": [7, 2],
            "logprobs": {"content": [{"token": "ok", "logprob": -0.5}, {"logprob": -0.1}]},
        }
        for i in range(n)
    ]
    return {"object": "chat.completion", "choices": choices, "prompt_token_ids": [1, 3]}


def test_token_server_backend_always_sends_both():
    with OpenAITestServer(respond=_token_answer) as srv:
        backend = TokenServerBackend(srv.url, "test-model")
        try:
            backend.generate([HI], SamplingParams(n=2, max_new_tokens=4, seed=0))
            backend.generate([HI], SamplingParams(n=2, top_k=50, repetition_penalty=1.05))
            backend.generate([HI], SamplingParams(temperature=0))
        finally:
            backend.close()
        bodies = [r.body for r in srv.chat_requests()]
    assert [(b["top_k"], b["repetition_penalty"]) for b in bodies] == [
        (-1, 1.0),
        (50, 1.05),
        (-1, 1.0),
    ]


# ----------------------------------------------------------------------------- local backend


@pytest.fixture(scope="module")
def shipped_penalty(tiny_text_model, tmp_path_factory):
    """The tiny text model with a generation_config.json that sets what Qwen2.5 instruct
    checkpoints set: a repetition penalty and top-k (plus sampling defaults)."""
    from rmkit.models.loading import load_model

    folder = tmp_path_factory.mktemp("penalised") / "model"
    shutil.copytree(tiny_text_model, folder)
    path = folder / "generation_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(repetition_penalty=1.3, top_k=5, do_sample=True, temperature=0.7, top_p=0.8)
    path.write_text(json.dumps(cfg))
    loaded = load_model(str(folder))
    assert loaded.model.generation_config.repetition_penalty == 1.3
    return loaded


def _ids(backend, params, convs=CONVS):
    return [[s.token_ids for s in row] for row in backend.generate_detailed(convs, params)]


@pytest.mark.parametrize("decoder", ["auto", "generate"])
def test_checkpoint_generation_config_is_not_used(shipped_penalty, loaded_text, decoder):
    """REQUIRED: default SamplingParams sample without the checkpoint's repetition_penalty 1.3
    and top_k 5 - exactly as the same weights with a neutral generation config - and asking
    for the penalty explicitly gives something else."""
    shipped = HFBackend(shipped_penalty, batch_size=4, decoder=decoder)
    plain = HFBackend(loaded_text, batch_size=4, decoder=decoder)
    greedy = SamplingParams(temperature=0, max_new_tokens=24)
    default = _ids(shipped, greedy)
    assert default == _ids(plain, greedy)
    penalised = SamplingParams(temperature=0, max_new_tokens=24, repetition_penalty=1.3)
    assert _ids(shipped, penalised) == _ids(plain, penalised)
    assert _ids(plain, penalised) != default
    sampled = SamplingParams(n=3, max_new_tokens=12, seed=5)
    assert _ids(shipped, sampled) == _ids(plain, sampled)
    assert _ids(plain, SamplingParams(n=3, max_new_tokens=12, seed=5, top_k=5)) != _ids(
        plain, sampled
    )
    # which decoder ran: the shared-prompt one declines neither control
    assert shipped.stats["decoder"] == ("prefix" if decoder == "auto" else "generate")


@pytest.mark.parametrize("decoder", ["auto", "generate"])
def test_penalty_equals_transformers_own(loaded_text, decoder):
    """rmkit applies the penalty itself (after the log-prob recorder): same tokens as
    ``generate`` applying it."""
    from rmkit.models.chat import prepare_inputs

    be = HFBackend(loaded_text, batch_size=1, decoder=decoder)
    params = SamplingParams(temperature=0, max_new_tokens=20, repetition_penalty=1.5)
    ours = _ids(be, params)
    for conv, row in zip(CONVS, ours, strict=True):
        cfg = be._generation_config(params)
        cfg.repetition_penalty = 1.5
        inputs = prepare_inputs(loaded_text, [conv])
        with torch.no_grad():
            out = loaded_text.model.generate(**inputs, generation_config=cfg)
        n = inputs["input_ids"].shape[1]
        assert out.sequences[0, n : n + len(row[0])].tolist() == row[0]


@pytest.mark.parametrize("decoder", ["auto", "generate"])
def test_top_k_1_is_greedy(loaded_text, decoder):
    be = HFBackend(loaded_text, batch_size=4, decoder=decoder)
    greedy = _ids(be, SamplingParams(temperature=0, max_new_tokens=10))
    k1 = _ids(be, SamplingParams(n=2, temperature=1.3, top_k=1, max_new_tokens=10, seed=3))
    assert k1 == [[row[0], row[0]] for row in greedy]


def test_processed_logprobs_include_penalty_and_top_k(loaded_text):
    """processed_logprobs: what was sampled from (tokens outside the top-k never appear and
    the log-probs are renormalised over the k kept); raw: the model's own distribution."""
    params = SamplingParams(
        n=2, max_new_tokens=8, seed=1, top_k=3, repetition_penalty=1.4, logprobs=True
    )
    raw = HFBackend(loaded_text, batch_size=4).generate_detailed(CONVS, params, top_logprobs=5)
    done = HFBackend(loaded_text, batch_size=4, logprobs_mode="processed_logprobs")
    processed = done.generate_detailed(CONVS, params, top_logprobs=5)
    for r_row, p_row in zip(raw, processed, strict=True):
        for r, p in zip(r_row, p_row, strict=True):
            assert r.token_ids == p.token_ids and r.token_logprobs != p.token_logprobs
            for step in p.top_logprobs:  # only 3 tokens have any probability
                finite = [lp for _, lp in step if lp > -math.inf]
                assert len(finite) == 3
                assert sum(math.exp(lp) for lp in finite) == pytest.approx(1.0, abs=1e-5)


def test_repetition_penalty_processor_skips_left_padding():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 9, generator=g)
    prompts = [[1, 2, 3], [4]]
    pad = 5
    # (rows, 3 padded prompt columns + 2 generated)
    ids = torch.tensor([[1, 2, 3, 6, 6], [pad, pad, 4, 7, 1]])
    ours = RepetitionPenalty(1.7, prompts, start=3)(ids, scores.clone())
    hf = RepetitionPenaltyLogitsProcessor(1.7)
    for row, seq in enumerate([[1, 2, 3, 6, 6], [4, 7, 1]]):
        want = hf(torch.tensor([seq]), scores[row : row + 1].clone())
        assert torch.allclose(ours[row], want[0])
    assert ours[1, pad] == scores[1, pad]  # the pad token was never in row 1's prompt
    # called again with the same ids (the recorder's copy, then the chain): the same result
    proc = RepetitionPenalty(1.7, prompts, start=3)
    assert torch.equal(proc(ids, scores), proc(ids, scores))


def test_checkpoint_note_is_logged_once(shipped_penalty, loaded_text, caplog):
    note = checkpoint_sampling_note(shipped_penalty.model)
    assert "repetition_penalty=1.3" in note and "top_k=5" in note
    assert checkpoint_sampling_note(loaded_text.model) is None
    from rmkit.generation import hf

    hf._NOTED.discard(shipped_penalty.model)
    with caplog.at_level(logging.INFO, logger="rmkit.generation.hf"):
        HFBackend(shipped_penalty)
        log_checkpoint_sampling(shipped_penalty.model)
    lines = [r for r in caplog.records if "generation_config sets" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
