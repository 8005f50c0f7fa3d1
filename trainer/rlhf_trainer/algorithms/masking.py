"""Reductions over padded tensors that only look at the mask.

Every function here reads a value only where ``mask`` is true and selects with
``torch.where`` instead of multiplying by the mask, so a NaN or an infinity
sitting in a padded slot cannot leak into a result (``inf * 0`` is NaN).
Nothing depends on where the padding is: left padding, right padding or holes
in the middle all give the same answer as the packed values would.
"""

from __future__ import annotations

import torch
from torch import Tensor


def as_bool_mask(mask: Tensor) -> Tensor:
    """``mask`` as a bool tensor (accepts bool, int or float 0/1 masks)."""
    return mask if mask.dtype == torch.bool else mask != 0


def masked_fill_zero(values: Tensor, mask: Tensor) -> Tensor:
    """``values`` where ``mask`` is true, exactly 0 elsewhere."""
    return torch.where(as_bool_mask(mask), values, torch.zeros((), dtype=values.dtype, device=values.device))


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``values`` over the true positions of ``mask`` (all dims, or along ``dim``)."""
    filled = masked_fill_zero(values, mask)
    return filled.sum() if dim is None else filled.sum(dim=dim)


def masked_count(mask: Tensor, dim: int | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Number of true positions of ``mask`` (all dims, or along ``dim``), as ``dtype``."""
    as_num = as_bool_mask(mask).to(dtype)
    return as_num.sum() if dim is None else as_num.sum(dim=dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` over the true positions of ``mask``.

    An empty mask (or an empty row when ``dim`` is given) gives 0, not NaN: a
    response of zero tokens contributes nothing rather than poisoning a batch.
    """
    count = masked_count(mask, dim=dim, dtype=values.dtype)
    return masked_sum(values, mask, dim=dim) / count.clamp_min(1)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``values`` over all true positions of ``mask``.

    ``unbiased`` applies Bessel's correction n/(n-1); with fewer than two
    values the variance is 0.
    """
    mean = masked_mean(values, mask)
    centered = masked_fill_zero(values - mean, mask)
    count = masked_count(mask, dtype=values.dtype)
    denominator = (count - 1.0) if unbiased else count
    return (centered * centered).sum() / denominator.clamp_min(1)


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``values`` to unit variance over the true positions of ``mask``.

    ``(x - mean) / sqrt(var + eps)`` with ``shift_mean``; without it the mean is
    added back (scale only). Padded positions come out as 0.
    """
    mean = masked_mean(values, mask)
    var = masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return masked_fill_zero(whitened, mask)
