"""Truncated importance sampling against the rollout/trainer mismatch, with hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_trainer.algorithms import MISMATCH_METRICS, ppo_policy_loss, truncated_importance_weights
from rlhf_trainer.telemetry import METRIC_KEYS

NAN = float("nan")

# Two rows: row 0 right-padded [a, b, c, pad], row 1 left-padded [pad, pad, d, e].
# Weights w = p_trainer / p_rollout: a 0.5, b 1.0, c 3.0, d 1.5, e 4.0; cap 2 truncates c and e.
MASK = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
WEIGHTS = [0.5, 1.0, 3.0, 1.5, 4.0]
ROLLOUT = torch.tensor([[-1.0, -2.0, -0.5, NAN], [1e30, NAN, -3.0, -0.25]], dtype=torch.float64)


def trainer_logprobs() -> torch.Tensor:
    out = torch.full((2, 4), NAN, dtype=torch.float64)
    out[MASK] = ROLLOUT[MASK] + torch.tensor(WEIGHTS, dtype=torch.float64).log()
    return out


def test_weights_are_truncated_at_the_cap_and_one_on_padding() -> None:
    result = truncated_importance_weights(trainer_logprobs(), ROLLOUT, MASK, cap=2.0)
    expected = torch.tensor([[0.5, 1.0, 2.0, 1.0], [1.0, 1.0, 1.5, 2.0]], dtype=torch.float32)
    torch.testing.assert_close(result.weights, expected)
    assert not result.weights.requires_grad


def test_mismatch_metrics_by_hand() -> None:
    metrics = truncated_importance_weights(trainer_logprobs(), ROLLOUT, MASK, cap=2.0).metrics
    assert set(metrics) == set(MISMATCH_METRICS)
    k3 = sum(w - 1 - math.log(w) for w in WEIGHTS) / 5  # KL(rollout || trainer), k3
    assert metrics["rollout/mismatch_kl"].item() == pytest.approx(k3, rel=1e-6)
    assert metrics["rollout/is_weight_mean"].item() == pytest.approx(sum(WEIGHTS) / 5)
    assert metrics["rollout/is_weight_max"].item() == pytest.approx(4.0)
    assert metrics["rollout/is_truncated_frac"].item() == pytest.approx(2 / 5)


def test_equal_logprobs_give_weight_one_and_no_mismatch() -> None:
    logprobs = torch.tensor([[-0.3, -2.0, -7.5], [-1.0, -0.1, -4.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    result = truncated_importance_weights(logprobs, logprobs.clone(), mask, cap=2.0)
    assert torch.equal(result.weights, torch.ones(2, 3))
    assert result.metrics["rollout/mismatch_kl"].item() == 0.0
    assert result.metrics["rollout/is_weight_mean"].item() == 1.0
    assert result.metrics["rollout/is_weight_max"].item() == 1.0
    assert result.metrics["rollout/is_truncated_frac"].item() == 0.0


def test_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="cap must be >= 1"):
        truncated_importance_weights(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), cap=0.5)


def test_policy_loss_scales_each_token_by_its_weight() -> None:
    # Ratio 1 everywhere (logprobs == old), so each token's PPO loss is -A; advantages 1, -2, 3
    # on three tokens, the fourth padded. With weights 0.5, 2, 1: token-mean of (-0.5, 4, -3) / 3.
    logprobs = torch.tensor([[-1.0, -2.0, -3.0, NAN]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.0, -3.0, NAN]])
    advantages = torch.tensor([[1.0, -2.0, 3.0, NAN]])
    mask = torch.tensor([[1, 1, 1, 0]])
    weights = torch.tensor([[0.5, 2.0, 1.0, 7.0]])  # 7 sits on padding: never read
    plain = ppo_policy_loss(logprobs, old, advantages, mask)
    weighted = ppo_policy_loss(logprobs, old, advantages, mask, importance_weights=weights)
    assert plain.loss.item() == pytest.approx((-1.0 + 2.0 - 3.0) / 3)
    assert weighted.loss.item() == pytest.approx((-0.5 + 4.0 - 3.0) / 3)
    weighted.loss.backward()
    assert logprobs.grad is not None and logprobs.grad[0, 3].item() == 0.0
    # d(loss)/d(logprob) = -A * w / 3 at ratio 1: the weight scales the gradient, not just the value.
    torch.testing.assert_close(logprobs.grad[0, :3], torch.tensor([-0.5, 4.0, -3.0]) / 3)


def test_mismatch_metrics_are_contract_keys() -> None:
    assert set(MISMATCH_METRICS) <= set(METRIC_KEYS)
    assert "perf/weight_sync_bytes" in METRIC_KEYS and "timing/weight_sync_s" in METRIC_KEYS
