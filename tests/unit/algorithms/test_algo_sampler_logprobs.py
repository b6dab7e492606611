"""sampler_token_logprobs: the log-probs of the distribution a sampler draws from (repetition
penalty, temperature, top-k, top-p), by hand on a 4-token vocabulary and against transformers'
own logits processors."""

from __future__ import annotations

import math

import pytest
import torch

from rmkit.algorithms import sampler_token_logprobs, token_logprobs
from rmkit.errors import RmkitError

LOGITS = [2.0, 1.0, -1.0, 0.0]


def approx(expected):
    return pytest.approx(expected, abs=1e-6)  # float32


def lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def one(token: int, logits=LOGITS, context=None, **kw) -> float:
    """The log-prob of ``token`` at a single position (batch 1, one completion token)."""
    x = torch.tensor([[logits]])
    ctx = None if context is None else torch.tensor([context])
    out = sampler_token_logprobs(x, torch.tensor([[token]]), ctx, **kw)
    assert out.shape == (1, 1)
    return float(out[0, 0])


def test_neutral_controls_equal_temperature_mode():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    tokens = torch.randint(0, 11, (3, 5), generator=g)
    ctx = torch.randint(0, 11, (3, 4), generator=g)
    for t in (1.0, 0.7):
        assert torch.allclose(
            sampler_token_logprobs(logits, tokens, ctx, temperature=t),
            token_logprobs(logits, tokens, t),
        )
    assert one(1) == approx(1.0 - lse(*LOGITS))


def test_repetition_penalty_by_hand():
    # context {0, 2}: 2.0 -> 1.0 (divided), -1.0 -> -2.0 (multiplied); 1 and 3 untouched
    assert one(1, context=[0, 2], repetition_penalty=2.0) == approx(1.0 - lse(1.0, 1.0, -2.0, 0.0))
    # a penalty below 1 rewards repetition: 2.0 -> 4.0
    assert one(0, context=[0], repetition_penalty=0.5) == approx(4.0 - lse(4.0, 1.0, -1.0, 0.0))
    # padding in the context is not a token of the prompt
    x, tok = torch.tensor([[LOGITS]]), torch.tensor([[1]])
    ctx, mask = torch.tensor([[0, 0]]), torch.tensor([[0, 1]])
    padded = sampler_token_logprobs(x, tok, ctx, repetition_penalty=2.0, context_mask=mask)
    assert float(padded[0, 0]) == approx(1.0 - lse(1.0, 1.0, -1.0, 0.0))
    mask = torch.tensor([[0, 0]])
    none = sampler_token_logprobs(x, tok, ctx, repetition_penalty=2.0, context_mask=mask)
    assert float(none[0, 0]) == approx(1.0 - lse(*LOGITS))


def test_repetition_penalty_counts_earlier_completion_tokens_only():
    # completion [3, 3, 1]: token 3 is penalised at positions 1 and 2, not at 0 (where it is
    # being generated for the first time); token 1 nowhere before it
    row = [0.0, 1.0, 2.0, 3.0]
    x = torch.tensor([[row, row, row]])
    out = sampler_token_logprobs(x, torch.tensor([[3, 3, 1]]), None, repetition_penalty=3.0)
    assert out[0].tolist() == approx(
        [3.0 - lse(*row), 1.0 - lse(0.0, 1.0, 2.0, 1.0), 1.0 - lse(0.0, 1.0, 2.0, 1.0)]
    )


def test_top_k_by_hand():
    assert one(0, top_k=2) == approx(2.0 - lse(2.0, 1.0))
    assert one(1, top_k=2, temperature=0.5) == approx(2.0 - lse(4.0, 2.0))
    assert one(0, top_k=4) == approx(2.0 - lse(*LOGITS))  # k >= V: off
    # ties at the k-th value are kept (as transformers does)
    assert one(2, logits=[1.0, 1.0, 1.0, 0.0], top_k=2) == approx(-math.log(3))


def test_top_p_by_hand():
    # probabilities ~ [.644, .237, .032, .087]; ascending cumulative .032, .119, .356, 1
    assert one(3, top_p=0.9) == approx(0.0 - lse(2.0, 1.0, 0.0))  # drops token 2
    assert one(1, top_p=0.7) == approx(1.0 - lse(2.0, 1.0))  # drops 2 and 3
    assert one(0, top_p=0.01) == approx(0.0)  # the most likely token always stays


def test_a_taken_token_outside_the_kept_set_stays_in():
    # top-k 1 keeps token 0 only; the taken token 2 is added back, never -inf
    assert one(2, top_k=1) == approx(-1.0 - lse(2.0, -1.0))
    assert one(2, top_p=0.5) == approx(-1.0 - lse(2.0, -1.0))


def test_combined_by_hand():
    """Penalty 2 (context {0}), temperature 0.5, top-k 3, top-p 0.8 over completion [1, 3]."""
    x = torch.tensor([[LOGITS, [0.5, 3.0, 1.0, -0.5]]])
    out = sampler_token_logprobs(x, torch.tensor([[1, 3]]), torch.tensor([[0]]), 0.5, 3, 0.8, 2.0)
    # t=0: seen {0}: [1, 1, -1, 0] / 0.5 = [2, 2, -2, 0]; top-k 3 drops 2; top-p drops 3
    # (cumulative .063 <= .2) -> {0, 1}
    # t=1: seen {0, 1}: [.25, 1.5, 1, -.5] / .5 = [.5, 3, 2, -1]; top-k drops 3; top-p drops
    # 0 (cumulative .057) -> {1, 2}, and the taken token 3 comes back
    assert out[0].tolist() == approx([-math.log(2), -1.0 - lse(3.0, 2.0, -1.0)])


def test_matches_transformers_processors_where_the_token_is_kept():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    g = torch.Generator().manual_seed(1)
    b, t, v, p = 3, 6, 13, 4
    logits = torch.randn(b, t, v, generator=g) * 2
    ctx = torch.randint(0, v, (b, p), generator=g)
    tokens = torch.randint(0, v, (b, t), generator=g)
    for top_k, top_p, penalty, temp in [(0, 1.0, 1.3, 1.0), (4, 1.0, 1.0, 0.7), (5, 0.7, 1.2, 0.9)]:
        ours = sampler_token_logprobs(logits, tokens, ctx, temp, top_k, top_p, penalty)
        assert torch.isfinite(ours).all()
        for i in range(t):
            ids = torch.cat([ctx, tokens[:, :i]], dim=1)
            s = logits[:, i].clone()
            procs = []
            if penalty != 1.0:
                procs.append(RepetitionPenaltyLogitsProcessor(penalty))
            if temp != 1.0:
                procs.append(TemperatureLogitsWarper(temp))
            if top_k:
                procs.append(TopKLogitsWarper(top_k))
            if top_p < 1.0:
                procs.append(TopPLogitsWarper(top_p))
            for proc in procs:
                s = proc(ids, s)
            ref = torch.log_softmax(s, dim=-1).gather(1, tokens[:, i : i + 1]).squeeze(1)
            kept = torch.isfinite(ref)
            assert torch.allclose(ours[:, i][kept], ref[kept], atol=1e-5)


def test_gradients_reach_the_kept_logits_only():
    x = torch.tensor([[LOGITS]], requires_grad=True)
    out = sampler_token_logprobs(x, torch.tensor([[0]]), None, top_k=2)
    out.sum().backward()
    grad = x.grad[0, 0].tolist()
    assert grad[2] == 0 and grad[3] == 0 and grad[0] > 0 > grad[1]


def test_chunked_top_p_equals_one_pass():
    from rmkit.algorithms.losses import _kept_tokens

    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 7, 9, generator=g)
    tokens = torch.randint(0, 9, (2, 7), generator=g)
    assert torch.equal(_kept_tokens(x, tokens, 3, 0.6), _kept_tokens(x, tokens, 3, 0.6, chunk=9))
    assert _kept_tokens(x, tokens, 0, 1.0) is None


def test_needs_a_positive_temperature():
    with pytest.raises(RmkitError, match="temperature > 0"):
        one(0, temperature=0.0)
