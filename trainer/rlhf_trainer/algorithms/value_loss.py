"""The critic's loss with value clipping, and explained variance.

Per response token, with new values V, the values at rollout time V_old and
the returns R (from ``gae``):

    V_clip = V_old + clip(V - V_old, -clip_range, clip_range)
    l      = 0.5 * max((V - R)^2, (V_clip - R)^2)

(the PPO2 baselines formulation; Schulman et al. 2017, arXiv:1707.06347).
``clip_range=None`` gives the plain ``0.5 * (V - R)^2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .aggregation import aggregate_loss
from .masking import as_bool_mask, masked_fill_zero, masked_mean, masked_var


@dataclass
class ValueLossOutput:
    """The loss (differentiable scalar) and detached 0-d diagnostics.

    ``metrics`` keys: ``critic/vf_loss``, ``critic/vf_clipfrac`` (tokens where
    the clipped term is the larger), ``critic/values_mean``,
    ``critic/explained_variance``.
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """``1 - Var[R - V] / Var[R]`` over the true positions of ``mask``; NaN when Var[R] = 0.

    1 is a perfect critic, 0 one no better than a constant, negative worse.
    """
    valid = as_bool_mask(mask)
    values = masked_fill_zero(values, valid)
    returns = masked_fill_zero(returns, valid)
    var_returns = masked_var(returns, valid)
    var_residual = masked_var(returns - values, valid)
    nan = torch.full_like(var_returns, float("nan"))
    return torch.where(var_returns > 0, 1.0 - var_residual / var_returns.clamp_min(1e-30), nan)


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    response_mask: Tensor,
    *,
    clip_range: float | None = 0.2,
    loss_agg: str = "token-mean",
    max_response_length: int | None = None,
) -> ValueLossOutput:
    """Clipped value loss over [B, T] tensors, aggregated with the named mode."""
    if not values.shape == old_values.shape == returns.shape == response_mask.shape:
        raise ValueError(
            "values, old_values, returns and response_mask must share a shape, got "
            f"{tuple(values.shape)}, {tuple(old_values.shape)}, {tuple(returns.shape)}, "
            f"{tuple(response_mask.shape)}"
        )
    if clip_range is not None and clip_range < 0:
        raise ValueError(f"clip_range must be >= 0 or None, got {clip_range}")
    mask = as_bool_mask(response_mask)
    v = masked_fill_zero(values, mask)
    v_old = masked_fill_zero(old_values, mask).to(v.dtype)
    target = masked_fill_zero(returns, mask).to(v.dtype)

    unclipped = (v - target).square()
    if clip_range is None:
        per_token = 0.5 * unclipped
        clip_used = torch.zeros_like(mask)
    else:
        v_clipped = v_old + (v - v_old).clamp(-clip_range, clip_range)
        clipped = (v_clipped - target).square()
        per_token = 0.5 * torch.maximum(unclipped, clipped)
        clip_used = clipped > unclipped

    loss = aggregate_loss(per_token, mask, loss_agg, max_response_length)
    with torch.no_grad():
        metrics = {
            "critic/vf_loss": loss.detach(),
            "critic/vf_clipfrac": masked_mean(clip_used.to(v.dtype), mask),
            "critic/values_mean": masked_mean(v.detach(), mask),
            "critic/explained_variance": explained_variance(v.detach(), target, mask),
        }
    return ValueLossOutput(loss=loss, metrics=metrics)
