"""Per-token KL estimators between the policy and the reference model.

With samples drawn from the policy pi and ``log_ratio = log pi(y) - log ref(y)``
(J. Schulman, "Approximating KL Divergence", 2020,
http://joschu.net/blog/kl-approx.html), estimators of KL(pi || ref):

- ``k1 = log_ratio``: unbiased, high variance, can be negative per token.
- ``k2 = 0.5 * log_ratio ** 2``: biased, low variance, always >= 0.
- ``k3 = exp(-log_ratio) - 1 + log_ratio``: unbiased, low variance, always >= 0
  (``ratio - 1 - log ratio`` with ``ratio = ref / pi``).

k3 contains an exponential: one token the policy has made far less likely
than the reference would blow it up. As is common practice (verl, OpenRLHF),
the log-ratio is clamped to ``[-log_ratio_clamp, log_ratio_clamp]`` before the
exponential and k3 to ``[-kl_clamp, kl_clamp]`` afterwards; k1 and k2 are not
clamped (clamping k1 would bias it without a stability gain).
Padded positions (``mask`` false) are exactly 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .aggregation import aggregate_loss
from .masking import masked_fill_zero

DEFAULT_LOG_RATIO_CLAMP = 20.0
DEFAULT_KL_CLAMP = 10.0

KLEstimator = Callable[[Tensor], Tensor]


def kl_k1(log_ratio: Tensor) -> Tensor:
    """k1 = log pi - log ref."""
    return log_ratio


def kl_k2(log_ratio: Tensor) -> Tensor:
    """k2 = (log pi - log ref)^2 / 2."""
    return 0.5 * log_ratio.square()


def kl_k3(
    log_ratio: Tensor, log_ratio_clamp: float = DEFAULT_LOG_RATIO_CLAMP, kl_clamp: float = DEFAULT_KL_CLAMP
) -> Tensor:
    """k3 = exp(-d) - 1 + d with d = log pi - log ref, d and the result clamped."""
    d = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    return (torch.exp(-d) - 1.0 + d).clamp(-kl_clamp, kl_clamp)


KL_ESTIMATORS: dict[str, KLEstimator] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def get_kl_estimator(name: str) -> KLEstimator:
    """The KL estimator registered as ``name``; ValueError listing the valid names otherwise."""
    try:
        return KL_ESTIMATORS[name]
    except KeyError:
        valid = ", ".join(sorted(KL_ESTIMATORS))
        raise ValueError(f"unknown KL estimator {name!r}; valid: {valid}") from None


def kl_penalty(
    logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k3", mask: Tensor | None = None
) -> Tensor:
    """Per-token KL estimate [B, T] of the policy from the reference; 0 where ``mask`` is false."""
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs shape {tuple(logprobs.shape)} != ref_logprobs shape {tuple(ref_logprobs.shape)}"
        )
    fn = get_kl_estimator(estimator)
    if mask is None:
        return fn(logprobs - ref_logprobs)
    # Compute on zeroed inputs so garbage in padded slots never reaches exp().
    log_ratio = masked_fill_zero(logprobs, mask) - masked_fill_zero(ref_logprobs, mask)
    return masked_fill_zero(fn(log_ratio), mask)


def kl_loss(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    estimator: str = "k3",
    loss_agg: str = "token-mean",
    max_response_length: int | None = None,
) -> Tensor:
    """KL-to-reference as a loss term (GRPO style, KL not folded into the reward).

    ``aggregate(kl_penalty(logprobs, ref_logprobs, estimator), mask, loss_agg)``;
    the caller multiplies by the KL coefficient.
    """
    per_token = kl_penalty(logprobs, ref_logprobs, estimator=estimator, mask=mask)
    return aggregate_loss(per_token, mask, loss_agg, max_response_length)
