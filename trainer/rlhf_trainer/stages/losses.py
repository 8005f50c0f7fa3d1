"""The KTO loss (the other stages' losses are in algorithms/offline_losses.py).

KTO (Ethayarajh et al. 2024, arXiv:2402.01306), with the implicit reward
``r = log pi(y|x) - log ref(y|x)`` and the reference point ``z = max(0, mean r)`` over the batch
(detached; the paper estimates the policy-reference KL from the batch):
desirable: ``w_d (1 - sigmoid(beta (r - z)))``; undesirable: ``w_u (1 - sigmoid(beta (z - r)))``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean KTO loss over the rows ([B] sequence log-probs, `desirable` [B] bool) and sums for
    the metrics (`kto/*_sum`, `kto/*_count`), so a step can average over micro batches with one
    kind of row missing."""
    logratio = policy_logps - ref_logps
    z = logratio.detach().mean().clamp_min(0.0)
    good = desirable.to(torch.bool)
    per_row = torch.where(
        good,
        desirable_weight * (1.0 - torch.sigmoid(beta * (logratio - z))),
        undesirable_weight * (1.0 - torch.sigmoid(beta * (z - logratio))),
    )
    loss = per_row.mean()
    with torch.no_grad():
        reward = beta * logratio
        sums = {
            "kto/loss": loss.detach(),
            "kto/kl": z,
            "kto/chosen_reward_sum": reward[good].sum(),
            "kto/chosen_reward_count": good.sum().to(reward.dtype),
            "kto/rejected_reward_sum": reward[~good].sum(),
            "kto/rejected_reward_count": (~good).sum().to(reward.dtype),
        }
    return loss, sums
