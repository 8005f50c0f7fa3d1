"""Policy, value and offline losses with values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_trainer.algorithms import (
    dpo_loss,
    explained_variance,
    pairwise_reward_loss,
    ppo_policy_loss,
    sequence_logprobs,
    sft_loss,
    value_loss,
)

NAN = float("nan")

# Five tokens in two rows: row 0 right-padded [a, b, c, pad], row 1 left-padded [pad, pad, d, e].
# Ratios and advantages: a (1.5, +1), b (0.5, +1), c (0.5, -1), d (4.0, -1), e (1.1, +2).
# clip_low 0.2, clip_high 0.28 (clip-higher):
#   a: max(-1.5, -1.28) = -1.28 (clipped)     b: max(-0.5, -0.8) = -0.5
#   c: max(0.5, 0.8) = 0.8 (clipped)          d: max(4.0, 1.28) = 4.0; dual clip 3 caps it at 3.0
#   e: max(-2.2, -2.2) = -2.2 (a tie is not clipping)
MASK = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
RATIOS = [1.5, 0.5, 0.5, 4.0, 1.1]
OLD = torch.tensor([[-1.0, -2.0, -0.7, NAN], [1e30, NAN, -3.0, -0.4]], dtype=torch.float64)
ADV = torch.tensor([[1.0, 1.0, -1.0, NAN], [NAN, 1e30, -1.0, 2.0]], dtype=torch.float64)


def new_logprobs() -> torch.Tensor:
    logp = torch.full((2, 4), NAN, dtype=torch.float64)
    logp[MASK] = OLD[MASK] + torch.tensor(RATIOS, dtype=torch.float64).log()
    return logp.requires_grad_()


def policy_loss(**kwargs):
    kwargs.setdefault("clip_low", 0.2)
    kwargs.setdefault("clip_high", 0.28)
    return ppo_policy_loss(new_logprobs(), OLD, ADV, MASK, **kwargs)


def test_ppo_token_mean_with_clip_higher() -> None:
    out = policy_loss()
    assert out.loss.item() == pytest.approx((-1.28 - 0.5 + 0.8 + 4.0 - 2.2) / 5)
    assert out.metrics["actor/clipfrac"].item() == pytest.approx(2 / 5)
    assert out.metrics["actor/dual_clipfrac"].item() == 0.0
    assert out.metrics["actor/ratio_max"].item() == pytest.approx(4.0)
    assert out.metrics["actor/ratio_min"].item() == pytest.approx(0.5)
    assert out.metrics["actor/ratio_mean"].item() == pytest.approx(sum(RATIOS) / 5)
    approx_kl = sum(r - 1 - math.log(r) for r in RATIOS) / 5
    assert out.metrics["actor/approx_kl"].item() == pytest.approx(approx_kl)


def test_dual_clip_caps_negative_advantage_tokens() -> None:
    out = policy_loss(dual_clip=3.0)
    assert out.loss.item() == pytest.approx((-1.28 - 0.5 + 0.8 + 3.0 - 2.2) / 5)
    assert out.metrics["actor/dual_clipfrac"].item() == pytest.approx(1 / 5)


def test_symmetric_clip_by_default() -> None:
    out = ppo_policy_loss(new_logprobs(), OLD, ADV, MASK, clip_low=0.2)
    # a is now clipped at 1.2, d at 1.2 (still below the unclipped 4.0).
    assert out.loss.item() == pytest.approx((-1.2 - 0.5 + 0.8 + 4.0 - 2.2) / 5)


def test_policy_loss_aggregation_modes() -> None:
    row0, row1 = (-1.28 - 0.5 + 0.8), (4.0 - 2.2)
    assert policy_loss(loss_agg="seq-mean-token-mean").loss.item() == pytest.approx((row0 / 3 + row1 / 2) / 2)
    out = policy_loss(loss_agg="seq-mean-token-sum-norm", max_response_length=8)
    assert out.loss.item() == pytest.approx((row0 + row1) / (2 * 8))


def test_gradient_flows_only_through_unclipped_valid_tokens() -> None:
    logp = new_logprobs()
    ppo_policy_loss(logp, OLD, ADV, MASK, clip_low=0.2, clip_high=0.28).loss.backward()
    grad = logp.grad
    assert torch.isfinite(grad).all()
    # d(-A * ratio)/d logp = -A * ratio, divided by the 5 tokens: b -> -0.1, d -> 0.8, e -> -0.44.
    assert grad[MASK].tolist() == pytest.approx([0.0, -0.1, 0.0, 0.8, -0.44])
    assert (grad[~MASK] == 0).all()


def test_policy_loss_argument_errors() -> None:
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(dual_clip=1.0)
    with pytest.raises(ValueError, match="share a shape"):
        ppo_policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="max_response_length"):
        policy_loss(loss_agg="seq-mean-token-sum-norm")


# Value loss, clip 0.2, three tokens, padding in between:
#   t1: V 1.0, V_old 0.5, R 1.2: (1 - 1.2)^2 = 0.04, V_clip 0.7 -> 0.25: 0.5 * 0.25 = 0.125 (clipped)
#   t2: V 0.4, V_old 0.5, R 0.0: 0.16 both ways -> 0.08
#   t3: V -0.5, V_old 0.0, R -0.3: 0.04 vs V_clip -0.2 -> 0.01: 0.02
VMASK = torch.tensor([[0, 1, 1], [1, 0, 0]], dtype=torch.bool)
V = torch.tensor([[NAN, 1.0, 0.4], [-0.5, 1e30, NAN]], dtype=torch.float64)
V_OLD = torch.tensor([[1e30, 0.5, 0.5], [0.0, NAN, NAN]], dtype=torch.float64)
R = torch.tensor([[NAN, 1.2, 0.0], [-0.3, NAN, 1e30]], dtype=torch.float64)


def test_clipped_value_loss_by_hand() -> None:
    out = value_loss(V, V_OLD, R, VMASK, clip_range=0.2)
    assert out.loss.item() == pytest.approx((0.125 + 0.08 + 0.02) / 3)
    assert out.metrics["critic/vf_clipfrac"].item() == pytest.approx(1 / 3)
    assert out.metrics["critic/values_mean"].item() == pytest.approx((1.0 + 0.4 - 0.5) / 3)
    unclipped = value_loss(V, V_OLD, R, VMASK, clip_range=None)
    assert unclipped.loss.item() == pytest.approx((0.02 + 0.08 + 0.02) / 3)


def test_value_loss_gradient_is_finite_and_zero_at_padding() -> None:
    values = V.clone().requires_grad_()
    value_loss(values, V_OLD, R, VMASK, clip_range=0.2).loss.backward()
    # t1 uses the clipped term (no gradient), t2: (0.4 - 0) / 3, t3: (-0.5 + 0.3) / 3.
    assert values.grad[VMASK].tolist() == pytest.approx([0.0, 0.4 / 3, -0.2 / 3])
    assert (values.grad[~VMASK] == 0).all()


def test_explained_variance() -> None:
    returns = torch.tensor([[1.0, 2.0, 3.0, NAN]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    constant = torch.full_like(returns, 2.0)
    assert explained_variance(constant, returns, mask).item() == pytest.approx(0.0)
    # Residual [0.5, -0.5, 0.5]: var 1/3 over var(R) = 1 -> 2/3.
    values = torch.tensor([[0.5, 2.5, 2.5, 1e30]], dtype=torch.float64)
    assert explained_variance(values, returns, mask).item() == pytest.approx(1 - 1 / 3)
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask).item())


# Offline losses.


def test_pairwise_reward_loss_with_and_without_margin() -> None:
    chosen = torch.tensor([2.0, 0.0], dtype=torch.float64)
    rejected = torch.tensor([1.0, 1.0], dtype=torch.float64)
    plain = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2
    for kind in ("sigmoid", "log-exp"):
        out = pairwise_reward_loss(chosen, rejected, kind=kind)
        assert out.loss.item() == pytest.approx(plain)
        assert out.metrics["rm/accuracy"].item() == 0.5
    with_margin = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(1.5))) / 2
    assert pairwise_reward_loss(chosen, rejected, margin=0.5).loss.item() == pytest.approx(with_margin)
    per_pair_margin = torch.tensor([0.5, 0.0], dtype=torch.float64)
    expected = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(1.0))) / 2
    assert pairwise_reward_loss(chosen, rejected, margin=per_pair_margin, kind="log-exp").loss.item() == (
        pytest.approx(expected)
    )
    with pytest.raises(ValueError, match="reward loss kind"):
        pairwise_reward_loss(chosen, rejected, kind="hinge")


# DPO: h = (-1 - -1.5) - (-2 - -1.5) = 1.0, beta 0.1.
PC, PR = torch.tensor([-1.0], dtype=torch.float64), torch.tensor([-2.0], dtype=torch.float64)
RC, RR = torch.tensor([-1.5], dtype=torch.float64), torch.tensor([-1.5], dtype=torch.float64)


def test_dpo_sigmoid_conservative_and_ipo() -> None:
    out = dpo_loss(PC, PR, RC, RR, beta=0.1)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.1)))
    assert out.metrics["dpo/chosen_reward"].item() == pytest.approx(0.05)
    assert out.metrics["dpo/rejected_reward"].item() == pytest.approx(-0.05)
    assert out.metrics["dpo/accuracy"].item() == 1.0
    assert out.metrics["dpo/margin"].item() == pytest.approx(0.1)
    cdpo = dpo_loss(PC, PR, RC, RR, beta=0.1, label_smoothing=0.1)
    assert cdpo.loss.item() == pytest.approx(
        0.9 * math.log1p(math.exp(-0.1)) + 0.1 * math.log1p(math.exp(0.1))
    )
    ipo = dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type="ipo")
    assert ipo.loss.item() == pytest.approx((1.0 - 5.0) ** 2)


def test_dpo_argument_errors() -> None:
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(PC, PR, RC, RR, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(PC, PR, RC, RR, beta=0.0)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(PC, PR, RC, RR, loss_type="kto")


def test_sequence_logprobs_and_sft_loss_ignore_padding() -> None:
    token_logprobs = torch.tensor([[-1.0, -2.0, -3.0, NAN], [NAN, NAN, -4.0, -2.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert sequence_logprobs(token_logprobs, mask).tolist() == pytest.approx([-6.0, -6.0])
    assert sequence_logprobs(token_logprobs, mask, average=True).tolist() == pytest.approx([-2.0, -3.0])
    assert sft_loss(token_logprobs, mask).loss.item() == pytest.approx(12.0 / 5)
    assert sft_loss(token_logprobs, mask, "seq-mean-token-mean").loss.item() == pytest.approx(2.5)
