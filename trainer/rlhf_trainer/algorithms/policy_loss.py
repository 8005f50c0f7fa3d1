"""The PPO clipped surrogate policy loss with clip-higher and dual clip.

Per response token, with ``ratio = exp(log pi - log pi_old)`` and advantage A:

    l = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))       (PPO)
    l = min(l, -A * dual_clip)             where A < 0, if dual_clip is set  (dual clip)

Schulman et al. 2017 (arXiv:1707.06347). Separate ``clip_low`` / ``clip_high``
("clip-higher", DAPO, Yu et al. 2025, arXiv:2503.14476) let a token's
probability grow further than it may shrink. The dual clip (Ye et al. 2020,
arXiv:1912.09729) bounds the loss of a negative-advantage token whose ratio
ran far above 1 by ``dual_clip * |A|`` (``dual_clip > 1``). The per-token
losses become a scalar through the named aggregation (``aggregation``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .aggregation import aggregate_loss
from .masking import as_bool_mask, masked_fill_zero, masked_mean

LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 5e8: beyond this the ratio is numerically meaningless anyway


@dataclass
class PolicyLossOutput:
    """The loss (differentiable scalar) and detached 0-d diagnostics.

    ``metrics`` keys: ``actor/pg_loss``, ``actor/clipfrac`` (tokens where the
    clipped term is the one used), ``actor/dual_clipfrac`` (tokens capped by the
    dual clip), ``actor/approx_kl`` (k3 estimate of KL(pi_old || pi), token
    mean), ``actor/ratio_mean``, ``actor/ratio_max``, ``actor/ratio_min``.
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    dual_clip: float | None = None,
    loss_agg: str = "token-mean",
    max_response_length: int | None = None,
    importance_weights: Tensor | None = None,
) -> PolicyLossOutput:
    """PPO clipped policy loss over [B, T] tensors; ``clip_high`` defaults to ``clip_low``."""
    if not logprobs.shape == old_logprobs.shape == advantages.shape == response_mask.shape:
        raise ValueError(
            "logprobs, old_logprobs, advantages and response_mask must share a shape, got "
            f"{tuple(logprobs.shape)}, {tuple(old_logprobs.shape)}, {tuple(advantages.shape)}, "
            f"{tuple(response_mask.shape)}"
        )
    clip_high = clip_low if clip_high is None else clip_high
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got clip_low={clip_low}, clip_high={clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")

    mask = as_bool_mask(response_mask)
    # Zero padded inputs first: a NaN there would otherwise reach exp() and the backward pass.
    log_ratio = masked_fill_zero(logprobs, mask) - masked_fill_zero(old_logprobs, mask)
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    adv = masked_fill_zero(advantages, mask).to(ratio.dtype)

    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    clip_used = clipped > unclipped
    dual_used = torch.zeros_like(clip_used)
    if dual_clip is not None:
        cap = -adv * dual_clip
        dual_used = (adv < 0) & (per_token > cap)
        per_token = torch.where(dual_used, cap, per_token)
    if importance_weights is not None:
        if importance_weights.shape != per_token.shape:
            raise ValueError(
                f"importance_weights must have shape {tuple(per_token.shape)}, "
                f"got {tuple(importance_weights.shape)}"
            )
        per_token = per_token * masked_fill_zero(importance_weights.detach(), mask).to(per_token.dtype)

    loss = aggregate_loss(per_token, mask, loss_agg, max_response_length)
    with torch.no_grad():
        ratio_d, log_ratio_d = ratio.detach(), log_ratio.detach()
        valid_ratios = ratio_d[mask]
        no_tokens = valid_ratios.numel() == 0
        metrics = {
            "actor/pg_loss": loss.detach(),
            "actor/clipfrac": masked_mean(clip_used.to(ratio.dtype), mask),
            "actor/dual_clipfrac": masked_mean(dual_used.to(ratio.dtype), mask),
            "actor/approx_kl": masked_mean(ratio_d - 1.0 - log_ratio_d, mask),
            "actor/ratio_mean": masked_mean(ratio_d, mask),
            "actor/ratio_max": ratio_d.new_ones(()) if no_tokens else valid_ratios.max(),
            "actor/ratio_min": ratio_d.new_ones(()) if no_tokens else valid_ratios.min(),
        }
    return PolicyLossOutput(loss=loss, metrics=metrics)
