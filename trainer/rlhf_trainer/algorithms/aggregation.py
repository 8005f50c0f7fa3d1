"""Loss aggregation: how a [B, T] matrix of per-token losses becomes one scalar.

The mode changes which samples weigh more, so it is a named choice in the
config, not a detail of each loss:

- ``token-mean``: every response token weighs the same,
  ``sum_bt l_bt m_bt / sum_bt m_bt``. Long responses weigh more per sample.
- ``seq-mean-token-mean``: average each response over its tokens, then average
  responses; ``mean_b (sum_t l_bt m_bt / sum_t m_bt)`` (the GRPO paper's form,
  Shao et al. 2024, arXiv:2402.03300). Rows with no token are left out.
- ``seq-mean-token-sum-norm``: sum each response over its tokens, divide by a
  constant (the maximum response length), average responses;
  ``sum_bt l_bt m_bt / (B * L_max)``. Dr. GRPO (Liu et al. 2025,
  "Understanding R1-Zero-Like Training", arXiv:2503.20783) uses it to remove
  the length bias of the per-sequence mean. The constant must be the same for
  every micro batch, hence ``max_response_length`` is required, never guessed
  from the padded width.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .masking import as_bool_mask, masked_count, masked_mean, masked_sum

LossAggregation = Callable[[Tensor, Tensor, "int | None"], Tensor]


def token_mean(losses: Tensor, mask: Tensor, max_response_length: int | None = None) -> Tensor:
    """``sum(l * m) / sum(m)`` over the whole batch (0 for an empty mask)."""
    return masked_mean(losses, mask)


def seq_mean_token_mean(losses: Tensor, mask: Tensor, max_response_length: int | None = None) -> Tensor:
    """Mean over non-empty rows of each row's token mean."""
    per_row = masked_mean(losses, mask, dim=-1)
    has_tokens = as_bool_mask(mask).any(dim=-1)
    return masked_sum(per_row, has_tokens) / masked_count(has_tokens, dtype=losses.dtype).clamp_min(1)


def seq_mean_token_sum_norm(losses: Tensor, mask: Tensor, max_response_length: int | None = None) -> Tensor:
    """``sum(l * m) / (B * max_response_length)`` (Dr. GRPO)."""
    if max_response_length is None or max_response_length <= 0:
        raise ValueError(
            "loss aggregation 'seq-mean-token-sum-norm' needs max_response_length > 0 "
            f"(the generation length budget), got {max_response_length!r}"
        )
    rows = losses.shape[0] if losses.ndim > 1 else 1
    return masked_sum(losses, mask) / (rows * float(max_response_length))


POLICY_LOSS_AGGREGATIONS: dict[str, LossAggregation] = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}


def get_loss_aggregation(name: str) -> LossAggregation:
    """The aggregation registered as ``name``; ValueError listing the valid names otherwise."""
    try:
        return POLICY_LOSS_AGGREGATIONS[name]
    except KeyError:
        valid = ", ".join(sorted(POLICY_LOSS_AGGREGATIONS))
        raise ValueError(f"unknown loss aggregation {name!r}; valid: {valid}") from None


def aggregate_loss(
    losses: Tensor, mask: Tensor, mode: str = "token-mean", max_response_length: int | None = None
) -> Tensor:
    """Reduce per-token ``losses`` [B, T] under ``mask`` [B, T] with the named ``mode``."""
    if losses.shape != mask.shape:
        raise ValueError(f"losses shape {tuple(losses.shape)} != mask shape {tuple(mask.shape)}")
    return get_loss_aggregation(mode)(losses, mask, max_response_length)


__all__ = [
    "POLICY_LOSS_AGGREGATIONS",
    "LossAggregation",
    "aggregate_loss",
    "get_loss_aggregation",
    "seq_mean_token_mean",
    "seq_mean_token_sum_norm",
    "token_mean",
]
