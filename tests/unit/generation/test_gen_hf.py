"""HFBackend on the tiny built-in models: shapes, seeding, greedy, stopping, log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from rmkit.errors import RmkitError
from rmkit.generation import make_backend
from rmkit.generation.base import Backend, SamplingParams
from rmkit.generation.hf import HFBackend

CONVS = [
    [{"role": "user", "content": "Which response is better?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say one word."}],
    [{"role": "user", "content": "two"}],
]


class _StopAt(torch.nn.Module):
    """Wraps an LM head: on decoding step ``steps[row]`` (0-based) row ``row`` of ``rows`` is
    forced to emit ``token`` (a test device that makes a random model end its turn exactly where
    we want). The first token of every row comes from prefill calls, which may cover all rows at
    once (``generate``) or one prompt each (the prefix decoder); later calls are one step each."""

    def __init__(self, head: torch.nn.Module, token: int, steps: dict[int, int], rows: int):
        super().__init__()
        self.head, self.token, self.steps, self.rows = head, token, steps, rows
        self.prefilled, self.step = 0, 0

    def forward(self, hidden):
        logits = self.head(hidden)
        if self.prefilled < self.rows:  # rows first.. of this call take their token 0
            first, step = self.prefilled, 0
            self.prefilled += logits.shape[0]
        else:
            first, step = 0, self.step + 1
            self.step = step
        for i in range(logits.shape[0]):
            if self.steps.get(first + i) == step:
                logits[i, -1, self.token] = 1e4
        return logits


def test_shapes_and_protocol(loaded_text):
    be = HFBackend(loaded_text, batch_size=4)
    assert isinstance(be, Backend)
    out = be.generate(CONVS, SamplingParams(n=3, max_new_tokens=6, seed=0))
    assert [len(row) for row in out] == [3, 3, 3]
    for row in out:
        for c in row:
            assert c.n_tokens == len(c.token_ids) and 1 <= c.n_tokens <= 6
            assert c.finish_reason in ("stop", "length") and c.mean_logprob is None
    # batch_size 4 with n=3 -> one conversation (3 sequences) per generate call
    assert be.stats["calls"] == 3 and be.stats["sequences"] == 9
    assert be.stats["prefill_s"] > 0 and be.stats["decode_s"] > 0


def test_seed_repeats_and_differs(loaded_text):
    be = HFBackend(loaded_text, batch_size=16)
    p = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=123)
    a = be.generate(CONVS, p)
    b = be.generate(CONVS, p)
    c = be.generate(CONVS, SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=124))
    ids = lambda out: [[x.token_ids for x in row] for row in out]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    assert len({tuple(x) for x in ids(a)[0]}) > 1  # the n samples of one prompt differ
    state = torch.random.get_rng_state()
    be.generate(CONVS[:1], p)
    assert torch.equal(state, torch.random.get_rng_state())  # caller's RNG untouched


def test_greedy_is_deterministic_and_batch_independent(loaded_text):
    be = HFBackend(loaded_text, batch_size=16)
    p = SamplingParams(n=2, temperature=0.0, max_new_tokens=8)
    loaded_text.model.train()
    together = be.generate(CONVS, p)
    assert loaded_text.model.training  # mode restored after generating in eval mode
    loaded_text.model.eval()
    assert be.stats["sequences"] == 3  # greedy: one sequence per conversation, copied n times
    alone = [HFBackend(loaded_text, batch_size=1).generate([c], p)[0] for c in CONVS]
    for row_t, row_a in zip(together, alone, strict=False):
        assert (
            row_t[0].token_ids == row_t[1].token_ids == row_a[0].token_ids
        )  # left padding is neutral


@pytest.mark.parametrize("decoder", ["auto", "generate"])
def test_stops_at_end_of_turn_per_row(loaded_text, decoder):
    im_end = loaded_text.tokenizer.convert_tokens_to_ids("<|im_end|>")
    be = HFBackend(loaded_text, batch_size=16, decoder=decoder)
    assert im_end in be.stop_ids
    model = loaded_text.model
    original = model.lm_head
    # row 0 is forced to end its turn at new token 3 (0-based), row 1 at new token 5
    model.lm_head = _StopAt(original, im_end, {0: 3, 1: 5}, rows=3)
    try:
        params = SamplingParams(temperature=0.0, max_new_tokens=7, logprobs=True)
        out = be.generate_detailed(CONVS[:3], params)
    finally:
        model.lm_head = original
    assert be.stats["decoder"] == ("prefix" if decoder == "auto" else "generate")
    first, second, third = (row[0] for row in out)
    assert (
        first.finish_reason == "stop"
        and len(first.token_ids) == 4
        and first.token_ids[-1] == im_end
    )
    assert (
        second.finish_reason == "stop"
        and len(second.token_ids) == 6
        and second.token_ids[-1] == im_end
    )
    assert im_end not in first.token_ids[:-1]
    assert third.finish_reason == "length" and len(third.token_ids) == 7
    assert "<|im_end|>" not in first.text
    assert first.text == loaded_text.tokenizer.decode(
        first.token_ids[:-1], skip_special_tokens=True
    )
    # log-probs are aligned with the tokens: the forced end token has probability ~1
    assert first.token_logprobs[-1] == pytest.approx(0.0, abs=1e-6)
    assert second.token_logprobs[-1] == pytest.approx(0.0, abs=1e-6)
    assert all(math.isfinite(x) and x < -1e-3 for x in first.token_logprobs[:-1])
    completion = first.to_completion()
    assert completion.n_tokens == 4 and completion.mean_logprob == pytest.approx(
        sum(first.token_logprobs) / 4
    )


def test_logprobs_match_a_forward_pass(loaded_text):
    """Mean log-prob = mean log-softmax of the model's raw logits at the sampled tokens."""
    from rmkit.models.chat import prepare_inputs

    be = HFBackend(loaded_text, batch_size=16)
    params = SamplingParams(
        n=2, temperature=0.7, top_p=0.9, max_new_tokens=6, seed=5, logprobs=True
    )
    out = be.generate(CONVS[:2], params)
    for conv, row in zip(CONVS[:2], out, strict=False):
        prompt = prepare_inputs(loaded_text, [conv])["input_ids"][0].tolist()
        for c in row:
            ids = torch.tensor([prompt + c.token_ids])
            with torch.no_grad():
                logp = torch.log_softmax(loaded_text.model(input_ids=ids).logits[0].float(), dim=-1)
            want = [float(logp[len(prompt) + t - 1, tok]) for t, tok in enumerate(c.token_ids)]
            assert c.mean_logprob == pytest.approx(sum(want) / len(want), abs=1e-4)


def test_detailed_top_logprobs(loaded_text):
    be = HFBackend(loaded_text)
    s = be.generate_detailed(
        CONVS[:1], SamplingParams(temperature=0.0, max_new_tokens=4, logprobs=True), top_logprobs=3
    )[0][0]
    assert len(s.token_logprobs) == len(s.top_logprobs) == len(s.token_ids)
    for tok, lp, top in zip(s.token_ids, s.token_logprobs, s.top_logprobs, strict=False):
        assert len(top) == 3 and top[0][0] == tok  # greedy picks the most likely token
        assert top[0][1] == pytest.approx(lp) and top[0][1] >= top[1][1] >= top[2][1]


def test_stop_strings(loaded_text):
    be = HFBackend(loaded_text)
    p = SamplingParams(temperature=1.0, max_new_tokens=16, seed=3)
    free = be.generate(CONVS[:2], p)
    text = free[0][0].text
    assert len(text) > 10
    stop = text[6:9]  # stop strings are matched in the generated text only
    cut = be.generate(
        CONVS[:2], SamplingParams(temperature=1.0, max_new_tokens=16, seed=3, stop=(stop,))
    )
    first = cut[0][0]
    assert first.finish_reason == "stop" and first.text == text[: text.find(stop)]
    assert first.n_tokens < free[0][0].n_tokens
    assert first.token_ids == free[0][0].token_ids[: first.n_tokens]  # same samples up to the stop
    other = free[1][0]
    if stop not in other.text:  # the other row of the batch is not cut
        assert cut[1][0].token_ids == other.token_ids


def test_vlm_with_image(loaded_vlm, tmp_path):
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (56, 56), (0, 128, 255)).save(img)
    conv = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": str(img)},
                {"type": "text", "text": "What is shown?"},
            ],
        }
    ]
    be = HFBackend(loaded_vlm, batch_size=4)
    out = be.generate(
        [conv, CONVS[0]], SamplingParams(n=2, max_new_tokens=5, seed=1, logprobs=True)
    )
    assert [len(r) for r in out] == [2, 2]
    assert all(math.isfinite(c.mean_logprob) for r in out for c in r)
    again = be.generate(
        [conv, CONVS[0]], SamplingParams(n=2, max_new_tokens=5, seed=1, logprobs=True)
    )
    assert [[c.token_ids for c in r] for r in out] == [[c.token_ids for c in r] for r in again]


def test_make_backend_local(loaded_text):
    be = make_backend(loaded_text, batch_size=2)
    assert isinstance(be, HFBackend) and be.batch_size == 2
    with pytest.raises(RmkitError, match="already loaded"):
        make_backend(loaded_text, dtype="bf16")
    with pytest.raises(RmkitError, match="batch_size"):
        HFBackend(loaded_text, batch_size=0)
