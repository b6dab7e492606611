"""Log-prob forward passes: the sequence layout, agreement with generation, shared prompts."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def policy(tiny_text_model):
    from rmkit.models.loading import load_model
    from rmkit.models.lora import LoraSettings, apply_lora

    loaded = load_model(tiny_text_model)
    loaded.model = apply_lora(loaded.model, LoraSettings(r=4, alpha=8, dropout=0.0))
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        for name, p in loaded.model.named_parameters():
            if "lora_B" in name:  # make the adapters matter
                p.normal_(0, 0.1)
    return loaded


def conversations(n: int) -> list[list[dict]]:
    return [
        [{"role": "user", "content": "Which answer is better? " + "more words " * (3 * i)}]
        for i in range(n)
    ]


def test_layout_left_pads_prompts_and_right_pads_completions(policy):
    from rmkit.training.policy import build_micro_batches

    convs = conversations(2)
    mbs = build_micro_batches(policy, convs, [[5, 6, 7], [8]], size=2, device="cpu")
    (mb,) = mbs
    pad = policy.tokenizer.pad_token_id
    assert mb.tokens.tolist() == [[5, 6, 7], [8, pad, pad]]
    assert mb.mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, att = mb.inputs["input_ids"], mb.inputs["attention_mask"]
    assert ids[:, -3:].tolist() == mb.tokens.tolist()
    assert att[0, 0] == 0 and att[1, 0] == 1  # the shorter prompt is left-padded
    assert mb.rows == slice(0, 2) and mb.prompts is None


def test_logprobs_match_the_generation_distribution(policy):
    from rmkit.generation.base import SamplingParams
    from rmkit.generation.hf import HFBackend
    from rmkit.training.policy import build_micro_batches, completion_logprobs

    policy.model.eval()
    convs = conversations(2)
    rows = HFBackend(policy).generate_detailed(
        convs, SamplingParams(n=2, max_new_tokens=5, seed=3, logprobs=True)
    )
    samples = [s for row in rows for s in row]
    mbs = build_micro_batches(
        policy, [c for c in convs for _ in range(2)], [s.token_ids for s in samples], 4, "cpu"
    )
    with torch.no_grad():
        lp = completion_logprobs(policy.model, mbs[0])
    for i, s in enumerate(samples):
        assert lp[i, : len(s.token_ids)].tolist() == pytest.approx(s.token_logprobs, abs=1e-4)


def test_shared_prompt_pass_gives_the_same_logprobs_and_gradients(policy):
    from rmkit.training.policy import build_micro_batches, completion_logprobs

    policy.model.train()
    convs = conversations(3)
    g = torch.Generator().manual_seed(1)
    comps, groups = [], []
    for i in range(3):
        for _ in range(3):
            comps.append(
                torch.randint(
                    3, 900, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g
                ).tolist()
            )
            groups.append(i)
    mbs = build_micro_batches(policy, [c for c in convs for _ in range(3)], comps, 4, "cpu", groups)
    assert [mb.group.tolist() for mb in mbs] == [[0, 0, 0, 1], [0, 0, 1, 1], [0]]

    def run(shared: bool):
        policy.model.zero_grad()
        out = []
        for mb in mbs:
            lp = completion_logprobs(policy.model, mb, temperature=0.7, shared=shared) * mb.mask
            lp.sum().backward()
            out.append(lp.detach())
        grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.requires_grad}
        return out, grads

    full, g_full = run(False)
    shared, g_shared = run(True)
    for a, b in zip(full, shared, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    scale = max(float(v.abs().max()) for v in g_full.values())
    assert scale > 0
    for name in g_full:
        assert torch.allclose(g_full[name], g_shared[name], atol=1e-5 * scale), name


def test_folding_lora_for_generation_is_exact_and_undone(policy):
    from rmkit.models.lora import merged_lora

    model = policy.model.eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(3, 900, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with merged_lora(model) as n_folded:
            folded = model(input_ids=ids).logits
            assert n_folded == 14  # every adapted linear layer of the tiny Llama
        after = model(input_ids=ids).logits
    assert torch.allclose(plain, folded, atol=1e-5)
    assert torch.equal(plain, after)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    with merged_lora(model, enabled=False) as n_folded:
        assert n_folded == 0


def test_bf16_rollout_copy_runs_in_bf16_and_restores_fp32_weights(policy):
    from rmkit.models.lora import merged_lora
    from rmkit.training.rollout import rollout_dtype

    model = policy.model.eval()
    assert rollout_dtype(None, model) is None
    assert rollout_dtype("float32", model) is None  # already the model's dtype: nothing to swap
    assert rollout_dtype("bfloat16", model) is torch.bfloat16
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(3, 900, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with merged_lora(model, True, torch.bfloat16) as n_folded:
            assert n_folded == 14
            # base weights (LoRA folded in) in bf16; the unused adapters are left alone
            named = list(model.named_parameters())
            assert {p.dtype for n, p in named if "lora_" not in n} == {torch.bfloat16}
            assert {p.dtype for n, p in named if "lora_" in n} == {torch.float32}
            low = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert low.dtype == torch.bfloat16
    # a bf16 evaluation of the same function: close, not equal
    assert not torch.equal(low.float(), plain)
    assert torch.allclose(low.float(), plain, atol=0.1 * float(plain.abs().max()))
    assert torch.equal(plain, after)
    assert all(
        torch.equal(before[n], p) and p.dtype == torch.float32 for n, p in model.named_parameters()
    )
