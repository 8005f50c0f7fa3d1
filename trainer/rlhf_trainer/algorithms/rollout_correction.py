"""Rollout-training mismatch: truncated importance sampling (TIS) and the mismatch metrics.

The rollout engine (vLLM) samples token y_t with probability q(y_t) computed by its own kernels;
the trainer computes the same token's probability p(y_t) under the same weights with other kernels
(and, on GPU, often another precision). The policy gradient assumes the samples came from p. Per
response token, with the trainer's log-probabilities at rollout time (the "old" policy) and the
engine's sampling log-probabilities:

    w_t      = exp(log p(y_t) - log q(y_t))          importance weight, sampler -> trainer
    w~_t     = min(w_t, cap)                           truncated (TIS)
    loss_t  <- w~_t * loss_t                           w~ is a constant (no gradient)

Yao, Liu, et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"
(the TIS fix, cap C = 2 in their runs). Truncation bounds the variance a few tokens with
p >> q would add; when the engines agree (w = 1 everywhere) the loss is unchanged.

Metrics, over response tokens: ``rollout/mismatch_kl``: k3 estimate of KL(q || p),
mean of ``w - 1 - log w`` (non-negative, unbiased since E_q[w] = 1);
``rollout/is_weight_mean`` and ``rollout/is_weight_max``: of the untruncated w;
``rollout/is_truncated_frac``: fraction of tokens with w > cap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .masking import as_bool_mask, masked_fill_zero, masked_mean

LOG_WEIGHT_CLAMP = 20.0

MISMATCH_METRICS = (
    "rollout/mismatch_kl",
    "rollout/is_weight_mean",
    "rollout/is_weight_max",
    "rollout/is_truncated_frac",
)


@dataclass
class ImportanceWeights:
    """``weights`` [B, T]: the truncated weights to multiply the per-token loss by (detached;
    1 on padding). ``metrics``: detached 0-d tensors keyed as in ``MISMATCH_METRICS``."""

    weights: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


@torch.no_grad()
def truncated_importance_weights(
    trainer_logprobs: Tensor, rollout_logprobs: Tensor, response_mask: Tensor, cap: float
) -> ImportanceWeights:
    """min(exp(trainer_logprobs - rollout_logprobs), cap) per token, and the mismatch metrics."""
    if not trainer_logprobs.shape == rollout_logprobs.shape == response_mask.shape:
        raise ValueError(
            "trainer_logprobs, rollout_logprobs and response_mask must share a shape, got "
            f"{tuple(trainer_logprobs.shape)}, {tuple(rollout_logprobs.shape)}, {tuple(response_mask.shape)}"
        )
    if cap < 1.0:
        raise ValueError(f"the importance-weight cap must be >= 1, got {cap}")
    mask = as_bool_mask(response_mask)
    log_w = masked_fill_zero(trainer_logprobs.detach().float(), mask) - masked_fill_zero(
        rollout_logprobs.detach().float(), mask
    )
    log_w = log_w.clamp(-LOG_WEIGHT_CLAMP, LOG_WEIGHT_CLAMP)
    raw = torch.exp(log_w)  # exactly 1 on padding: log_w is 0 there
    truncated = raw.clamp(max=cap)
    valid = raw[mask]
    metrics = {
        # w - 1 - log w >= 0; clamped since rounding makes it a hair negative where w ~ 1.
        "rollout/mismatch_kl": masked_mean((raw - 1.0 - log_w).clamp_min(0.0), mask),
        "rollout/is_weight_mean": masked_mean(raw, mask),
        "rollout/is_weight_max": valid.max() if valid.numel() else raw.new_ones(()),
        "rollout/is_truncated_frac": masked_mean((raw > cap).float(), mask),
    }
    return ImportanceWeights(weights=truncated, metrics=metrics)
