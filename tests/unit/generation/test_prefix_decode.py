"""The shared-prefix decoder against a plain forward pass, and the backend's use of it."""

from __future__ import annotations

import pytest
import torch

from rmkit.generation.base import SamplingParams
from rmkit.generation.hf import HFBackend
from rmkit.generation.prefix_decode import PrefixDecoder, unsupported_reason
from rmkit.generation.steps import sample_categorical

DIMS = dict(
    vocab_size=97,
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,  # grouped-query attention: 3 query heads per key/value head
    max_position_embeddings=256,
)


def _model(kind: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**DIMS)).eval()
    return Qwen2ForCausalLM(Qwen2Config(**DIMS, use_sliding_window=False)).eval()


def _run_recording(model, prompts, n, steps, pick):
    """Run the decoder, keeping each step's logits; ``pick`` chooses the tokens."""
    seen = []

    def select(logits, generated):
        seen.append(logits.clone())
        return pick(logits), False

    with torch.inference_mode():
        out = PrefixDecoder(model).run(prompts, n, steps, select)
    return out, torch.stack(seen, dim=1)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_logits_match_a_full_forward_pass(kind):
    """Every row's logits at every step equal those of one forward pass over prompt + tokens,
    with prompts of different lengths (padded shared caches) and sampled, differing rows."""
    model = _model(kind)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (11,), generator=gen).tolist(), [5, 7, 9]]
    torch.manual_seed(2)
    out, logits = _run_recording(
        model, prompts, 3, 9, lambda lg: torch.multinomial(lg.softmax(-1), 1)[:, 0]
    )
    assert out.shape == (6, 9) and logits.shape == (6, 9, 97)
    assert len({tuple(r) for r in out[:3].tolist()}) > 1  # the rows of a prompt differ
    for row in range(6):
        prompt = prompts[row // 3]
        ids = torch.tensor([prompt + out[row].tolist()])
        with torch.no_grad():
            want = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        torch.testing.assert_close(logits[row], want, atol=2e-5, rtol=1e-4)


def test_cache_grows_past_its_first_capacity():
    """The per-row cache starts at 64 positions and is regrown: 100 steps still match."""
    model = _model("llama")
    prompt = list(range(3, 20))
    out, logits = _run_recording(model, [prompt], 2, 100, lambda lg: lg.argmax(-1))
    with torch.no_grad():
        want = model(input_ids=torch.tensor([prompt + out[0].tolist()])).logits[0, 16:-1]
    torch.testing.assert_close(logits[0], want, atol=2e-5, rtol=1e-4)
    assert torch.equal(out[0], out[1])  # greedy rows of one prompt agree


def test_unsupported_models_and_configs_are_named():
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    assert unsupported_reason(_model("llama"), GenerationConfig()) is None
    sliding = Qwen2ForCausalLM(Qwen2Config(**DIMS, use_sliding_window=True, sliding_window=8))
    assert "sliding" in unsupported_reason(sliding)
    assert "'gpt2'" in unsupported_reason(_gpt2())
    reason = unsupported_reason(_model("llama"), GenerationConfig(repetition_penalty=1.3))
    assert reason == "generation_config.repetition_penalty=1.3"


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))


def test_sample_categorical_follows_the_distribution():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 1.0, 0.0]])
    torch.manual_seed(0)
    draws = torch.stack([sample_categorical(probs) for _ in range(20000)])
    assert torch.all(draws[:, 1] == 2)  # a one-hot row always gives its index
    counts = torch.bincount(draws[:, 0], minlength=4).double() / 20000
    assert counts[1] == 0  # zero probability: never drawn
    # binomial standard error at p=0.6, n=20000 is 0.0035: allow ~4 of them
    torch.testing.assert_close(counts, probs[0].double(), atol=0.015, rtol=0)


def test_sample_categorical_handles_unnormalised_edges():
    """Rows that sum to slightly less than 1 (float rounding) still return valid indices."""
    probs = torch.full((3, 5), 0.19999)
    torch.manual_seed(1)
    for _ in range(200):
        assert int(sample_categorical(probs).max()) <= 4


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.0, max_new_tokens=12, logprobs=True),
        SamplingParams(n=3, temperature=0.8, top_p=0.9, max_new_tokens=10, seed=4, logprobs=True),
    ],
    ids=["greedy", "sampled"],
)
def test_backend_prefix_path_matches_forward_logprobs(loaded_text, params):
    """Through HFBackend: the fast path runs for the tiny Llama, greedy output equals
    ``generate``'s, and every recorded log-prob equals a forward pass's."""
    from rmkit.models.chat import prepare_inputs

    convs = [
        [{"role": "user", "content": "Which response is better?"}],
        [{"role": "user", "content": "two"}],
    ]
    fast = HFBackend(loaded_text, decoder="auto")
    out = fast.generate_detailed(convs, params)
    assert fast.stats["decoder"] == "prefix"
    if params.greedy:
        slow = HFBackend(loaded_text, decoder="generate").generate_detailed(convs, params)
        assert [r[0].token_ids for r in out] == [r[0].token_ids for r in slow]
    for conv, row in zip(convs, out, strict=True):
        assert len(row) == params.n
        prompt = prepare_inputs(loaded_text, [conv])["input_ids"][0].tolist()
        for s in row:
            ids = torch.tensor([prompt + s.token_ids])
            with torch.no_grad():
                logp = torch.log_softmax(loaded_text.model(input_ids=ids).logits[0].float(), -1)
            want = [float(logp[len(prompt) + t - 1, tok]) for t, tok in enumerate(s.token_ids)]
            assert s.token_logprobs == pytest.approx(want, abs=1e-4)


def test_backend_rejects_an_unknown_decoder(loaded_text):
    from rmkit.errors import RmkitError

    with pytest.raises(RmkitError, match="decoder must be one of auto, generate"):
        HFBackend(loaded_text, decoder="vllm")
