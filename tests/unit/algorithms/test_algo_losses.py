"""Policy loss (asymmetric clip, pre-clip), KL estimators, aggregation, SFT loss."""

import math

import pytest
import torch

from rmkit.algorithms import (
    PRECLIP_BOUNDS,
    aggregate_loss,
    kl_k1,
    kl_k3,
    policy_loss,
    sft_loss,
    token_logprobs,
)
from rmkit.errors import RmkitError


def _surrogate(ratios, advs, **kw):
    logp = torch.log(torch.tensor([ratios])).requires_grad_()
    loss, stats = policy_loss(logp, torch.zeros_like(logp), torch.tensor([advs]), **kw)
    return logp, loss, stats


def test_clipped_surrogate_asymmetric_bounds():
    ratios = [1.1, 1.25, 1.5, 0.5, 0.5, 1.5, 0.9]
    advs = [1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -2.0]
    logp, loss, stats = _surrogate(ratios, advs, clip_low=0.2, clip_high=0.28)
    expected = [
        -1.1,  # inside [0.8, 1.28]: -r*A
        -1.25,  # inside the high bound 1.28 (a symmetric 0.2 clip would give -1.2)
        -1.28,  # A>0, r above 1.28: clipped to -1.28*1
        -0.5,  # A>0, r below 0.8: min(0.5, 0.8) keeps the unclipped 0.5
        0.8,  # A<0, r below 0.8: min(-0.5, -0.8) = -0.8 -> clipped
        1.5,  # A<0, r above 1.28: min(-1.5, -1.28) = -1.5 keeps the unclipped
        1.8,  # A=-2, r=0.9 inside: -(0.9 * -2)
    ]
    assert loss[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(2 / 7)
    assert stats["ratio_max"].item() == pytest.approx(1.5)
    loss.sum().backward()
    # d(-r*A)/dlogp = -r*A where unclipped is used; 0 where the clipped constant is used
    grads = [-1.1, -1.25, 0.0, -0.5, 0.0, 1.5, 1.8]
    assert logp.grad[0].tolist() == pytest.approx(grads, rel=1e-6, abs=1e-7)
    symmetric = _surrogate([1.25], [1.0], clip_low=0.2, clip_high=0.2)[1]
    assert symmetric.item() == pytest.approx(-1.2)


def test_per_token_advantages_and_mask_in_stats():
    logp = torch.log(torch.tensor([[1.0, 2.0], [1.0, 1.0]]))
    adv = torch.tensor([[1.0, 1.0], [-1.0, 3.0]])
    mask = torch.tensor([[1, 0], [1, 1]])
    loss, stats = policy_loss(logp, torch.zeros_like(logp), adv, mask)
    assert loss.flatten().tolist() == pytest.approx([-1.0, -1.2, 1.0, -3.0])
    assert stats["ratio_max"].item() == 1.0  # the ratio 2 sits on a masked token
    assert stats["clip_frac"].item() == 0.0


def test_preclip_keeps_huge_log_ratio_finite():
    assert pytest.approx((math.log(1e-3), math.log(1e3))) == PRECLIP_BOUNDS  # ±6.9078
    for adv in (-1.0, 1.0):
        logp = torch.tensor([[50.0]], requires_grad=True)
        loss, stats = policy_loss(
            logp, torch.zeros(1, 1), torch.tensor([adv]), log_ratio_clip=PRECLIP_BOUNDS
        )
        assert stats["ratio_max"].item() <= 1e3 * (1 + 1e-6)
        assert stats["preclip_frac"].item() == 1.0
        # A=-1: min(1000*-1, 1.2*-1) = -1000 -> loss 1000; A=+1: min(1000, 1.2) -> loss -1.2
        assert loss.item() == pytest.approx(1000.0 if adv < 0 else -1.2, rel=1e-4)
        loss.sum().backward()
        assert torch.isfinite(logp.grad).all()


def test_without_preclip_the_ratio_explodes():
    # log-ratio 50: finite in float32 but e^50 = 5.18e21 -- the loss spike R1-Reward reports
    loss, _ = policy_loss(torch.tensor([[50.0]]), torch.zeros(1, 1), torch.tensor([-1.0]))
    assert loss.item() == pytest.approx(math.exp(50), rel=1e-4)
    # log-ratio 100: exp overflows float32 -> the loss is inf ...
    logp = torch.tensor([[100.0]], requires_grad=True)
    loss, _ = policy_loss(logp, torch.zeros(1, 1), torch.tensor([-1.0]))
    assert math.isinf(loss.item())
    # ... and with A > 0 the loss looks fine but the gradient is NaN (0 * inf in min's backward)
    logp = torch.tensor([[100.0]], requires_grad=True)
    loss, _ = policy_loss(logp, torch.zeros(1, 1), torch.tensor([1.0]))
    assert loss.item() == pytest.approx(-1.2)
    loss.sum().backward()
    assert torch.isnan(logp.grad).all()
    with pytest.raises(RmkitError, match="log_ratio_clip"):
        policy_loss(logp, torch.zeros(1, 1), torch.tensor([1.0]), log_ratio_clip=(1.0, 2.0))


def test_kl_estimators():
    logp = torch.log(torch.tensor([0.5, 0.2, 0.3]))
    ref = torch.log(torch.tensor([0.25, 0.4, 0.3]))
    # k1 = logp - ref: ln(0.5/0.25) = ln 2 ; ln(0.2/0.4) = -ln 2 ; 0
    assert kl_k1(logp, ref).tolist() == pytest.approx([math.log(2), -math.log(2), 0.0], abs=1e-6)
    # k3 = e^(ref-logp) - (ref-logp) - 1: 0.5 + ln2 - 1 = 0.193147 ; 2 - ln2 - 1 = 0.306853 ; 0
    expected = [0.5 + math.log(2) - 1, 2 - math.log(2) - 1, 0.0]
    assert kl_k3(logp, ref).tolist() == pytest.approx(expected, abs=1e-6)
    assert kl_k3(
        torch.tensor([0.0]), torch.tensor([100.0]), max_log_ratio=10.0
    ).item() == pytest.approx(math.exp(10) - 11)


LOSS = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 99.0, 99.0], [7.0, 7.0, 7.0, 7.0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])


def test_aggregation_modes():
    # token mean: (1+2+3+4+10+20) / 6 tokens = 40/6
    assert aggregate_loss(LOSS, MASK, "token_mean").item() == pytest.approx(40 / 6)
    # sequence mean: mean(10/4, 30/2) over the 2 sequences with tokens = (2.5 + 15) / 2
    assert aggregate_loss(LOSS, MASK, "seq_mean").item() == pytest.approx(8.75)
    # constant (Dr. GRPO): 40 / (3 sequences * 5 max new tokens)
    assert aggregate_loss(LOSS, MASK, "constant", max_new_tokens=5).item() == pytest.approx(40 / 15)
    with pytest.raises(RmkitError, match="max_new_tokens"):
        aggregate_loss(LOSS, MASK, "constant")
    with pytest.raises(RmkitError, match="unknown loss aggregation"):
        aggregate_loss(LOSS, MASK, "mean")


def test_sft_loss_masks_and_shifts():
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0], [100.0, -100.0, 5.0], [0.0, math.log(3), 0.0], [9.0, 9.0, -9.0]]],
        requires_grad=True,
    )
    labels = torch.tensor([[-100, 2, -100, 1]])
    # position 0 predicts label 2 under uniform logits: -ln(1/3) = ln 3
    # position 1 predicts -100 (ignored); position 2 predicts 1 with p = 3/5: -ln 0.6
    # position 3 has nothing to predict. sum = ln 3 + ln(5/3) = ln 5, mean = ln5 / 2
    assert sft_loss(logits, labels).item() == pytest.approx(math.log(5) / 2, rel=1e-6)
    assert sft_loss(logits, labels, reduction="sum").item() == pytest.approx(math.log(5), rel=1e-6)
    sft_loss(logits, labels).backward()
    assert (
        logits.grad[0, 1].abs().sum().item() == 0.0 and logits.grad[0, 3].abs().sum().item() == 0.0
    )
    empty = sft_loss(logits, torch.full((1, 4), -100))
    assert empty.item() == 0.0 and empty.requires_grad


def test_token_logprobs():
    logits = torch.tensor([[[0.0, math.log(3), 0.0], [0.0, 0.0, 0.0]]])
    lp = token_logprobs(logits, torch.tensor([[1, 2]]))
    assert lp[0].tolist() == pytest.approx([math.log(0.6), math.log(1 / 3)], rel=1e-6)
    # temperature 2 halves the logits: [0, ln3/2, 0] -> p(1) = sqrt3 / (2 + sqrt3)
    hot = token_logprobs(logits, torch.tensor([[1, 2]]), temperature=2.0)
    assert hot[0, 0].item() == pytest.approx(math.log(math.sqrt(3) / (2 + math.sqrt(3))), rel=1e-6)


def test_supervised_mask_and_selected_loss_match_full_loss():
    from rmkit.algorithms import sft_loss_selected, supervised_mask

    logits = torch.tensor(
        [[[0.0, 0.0, 0.0], [100.0, -100.0, 5.0], [0.0, math.log(3), 0.0], [9.0, 9.0, -9.0]]]
    )
    labels = torch.tensor([[-100, 2, -100, 1]])
    mask = supervised_mask(labels)
    # positions 0 (predicts label 2) and 2 (predicts label 1); the last column is never kept
    assert mask.tolist() == [[True, False, True, False]]
    picked = logits[mask]  # what logits_to_keep=mask makes the model return: (2, V)
    assert sft_loss_selected(picked, labels, mask, reduction="sum").item() == pytest.approx(
        math.log(5), rel=1e-6
    )
    assert sft_loss_selected(picked, labels, mask).item() == pytest.approx(
        math.log(5) / 2, rel=1e-6
    )
    two = torch.tensor([[-100, -100, 0, 1], [-100, 1, -100, -100]])
    full = torch.randn(2, 4, 3)
    m2 = supervised_mask(two)
    assert m2.tolist() == [[False, True, True, False], [True, False, False, False]]
    assert sft_loss_selected(full[m2], two, m2, "sum").item() == pytest.approx(
        sft_loss(full, two, reduction="sum").item(), rel=1e-6
    )
