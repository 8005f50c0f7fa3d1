"""Losses of the offline stages: supervised fine-tuning, reward model, DPO.

- SFT: the masked negative log-likelihood of the target tokens.
- Reward model, pairwise (Bradley-Terry; Ouyang et al. 2022, arXiv:2203.02155):
  ``-log sigmoid(r_chosen - r_rejected - margin)``. The ``log-exp`` form
  ``log(1 + exp(r_rejected - r_chosen + margin))`` is the same function written
  as a softplus; both names are accepted because configs in the field use both.
- DPO (Rafailov et al. 2023, arXiv:2305.18290), with
  ``h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))``:
  ``sigmoid``: ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``,
  where ``eps = label_smoothing > 0`` is conservative DPO (Mitchell 2023,
  "A note on DPO with noisy preferences"); ``ipo``: ``(h - 1 / (2 beta))^2``
  (Azar et al. 2023, arXiv:2310.12036; pass length-averaged log-probs, as IPO
  intends, via ``sequence_logprobs(..., average=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .aggregation import aggregate_loss
from .masking import masked_mean, masked_sum


@dataclass
class OfflineLossOutput:
    """The loss (differentiable scalar) and detached 0-d diagnostics."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def sequence_logprobs(token_logprobs: Tensor, mask: Tensor, average: bool = False) -> Tensor:
    """Log-probability [B] of each row's masked tokens: the sum, or the per-token mean with ``average``."""
    if average:
        return masked_mean(token_logprobs, mask, dim=-1)
    return masked_sum(token_logprobs, mask, dim=-1)


def sft_loss(
    token_logprobs: Tensor,
    loss_mask: Tensor,
    loss_agg: str = "token-mean",
    max_response_length: int | None = None,
) -> OfflineLossOutput:
    """Masked NLL ``-aggregate(log p(y_t))`` over the target tokens (``loss_mask`` true)."""
    loss = aggregate_loss(-token_logprobs, loss_mask, loss_agg, max_response_length)
    return OfflineLossOutput(loss, {"sft/nll": loss.detach()})


def pairwise_reward_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    margin: Tensor | float | None = None,
    kind: Literal["sigmoid", "log-exp"] = "sigmoid",
) -> OfflineLossOutput:
    """Bradley-Terry loss of a reward model on preference pairs, mean over pairs.

    ``chosen_rewards``/``rejected_rewards`` [B]; ``margin`` a float or [B] (how
    much the chosen should win by, e.g. from preference strength).
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen_rewards shape {tuple(chosen_rewards.shape)} != rejected_rewards shape "
            f"{tuple(rejected_rewards.shape)}"
        )
    gap = chosen_rewards - rejected_rewards
    shifted = gap if margin is None else gap - margin
    if kind == "sigmoid":
        per_pair = -F.logsigmoid(shifted)
    elif kind == "log-exp":
        per_pair = F.softplus(-shifted)
    else:
        raise ValueError(f"unknown reward loss kind {kind!r}; valid: log-exp, sigmoid")
    loss = per_pair.mean()
    with torch.no_grad():
        metrics = {
            "rm/loss": loss.detach(),
            "rm/accuracy": (gap > 0).to(gap.dtype).mean(),
            "rm/margin": gap.mean(),
        }
    return OfflineLossOutput(loss, metrics)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid",
    label_smoothing: float = 0.0,
) -> OfflineLossOutput:
    """DPO / conservative DPO / IPO loss over [B] sequence log-probs, mean over pairs.

    Metrics: ``dpo/chosen_reward`` and ``dpo/rejected_reward`` (means of the
    implicit rewards ``beta * (log pi - log ref)``), ``dpo/accuracy`` (chosen
    implicit reward higher), ``dpo/margin``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_logratio = policy_chosen_logps - ref_chosen_logps
    rejected_logratio = policy_rejected_logps - ref_rejected_logps
    h = chosen_logratio - rejected_logratio
    if loss_type == "sigmoid":
        per_pair = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(
            -beta * h
        )
    elif loss_type == "ipo":
        if label_smoothing != 0.0:
            raise ValueError(
                "label_smoothing (conservative DPO) applies to loss_type='sigmoid' only, not 'ipo'"
            )
        per_pair = (h - 1.0 / (2.0 * beta)).square()
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; valid: ipo, sigmoid")
    loss = per_pair.mean()
    with torch.no_grad():
        chosen_reward = beta * chosen_logratio
        rejected_reward = beta * rejected_logratio
        metrics = {
            "dpo/loss": loss.detach(),
            "dpo/chosen_reward": chosen_reward.mean(),
            "dpo/rejected_reward": rejected_reward.mean(),
            "dpo/accuracy": (chosen_reward > rejected_reward).to(h.dtype).mean(),
            "dpo/margin": (chosen_reward - rejected_reward).mean(),
        }
    return OfflineLossOutput(loss, metrics)
