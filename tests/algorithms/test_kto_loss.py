"""The KTO loss of the offline stages (rlhf_trainer/stages/losses.py) on hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_trainer.stages.losses import kto_loss


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def approx(value: float):
    return pytest.approx(value, rel=1e-6, abs=1e-7)


def test_kto_loss_weights_each_kind_against_the_batch_reference_point() -> None:
    policy = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    ref = torch.tensor([-1.5, -1.0, -3.0])
    desirable = torch.tensor([True, False, True])
    loss, sums = kto_loss(policy, ref, desirable, beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)
    # log-ratios 0.5, -1.0, 0.0; their mean is below 0, so the reference point z is 0.
    expected = ((1 - sigmoid(0.5 * 0.5)) + 2.0 * (1 - sigmoid(0.5 * (0.0 + 1.0))) + (1 - sigmoid(0.0))) / 3
    assert loss.item() == approx(expected)
    assert sums["kto/kl"].item() == 0.0
    assert sums["kto/chosen_reward_sum"].item() == approx(0.5 * (0.5 + 0.0))
    assert sums["kto/rejected_reward_count"].item() == 1.0
    loss.backward()
    # Raising a desirable completion's log-prob lowers the loss; raising an undesirable one's raises it.
    assert policy.grad[0] < 0 and policy.grad[2] < 0 and policy.grad[1] > 0


def test_kto_reference_point_is_the_positive_mean_log_ratio() -> None:
    policy = torch.tensor([0.0, 0.0], requires_grad=True)
    ref = torch.tensor([-1.0, -3.0])
    loss, sums = kto_loss(policy, ref, torch.tensor([True, False]), beta=1.0)
    assert sums["kto/kl"].item() == 2.0  # mean of 1 and 3
    expected = ((1 - sigmoid(1.0 - 2.0)) + (1 - sigmoid(2.0 - 3.0))) / 2
    assert loss.item() == approx(expected)
