"""Reward variance increase: the reward adjustment of GRPOVI.

Yang, Gu, Qi, Yuan, "Accelerating RLHF Training with Reward Variance
Increase", 2025, arXiv:2505.23247. A group of n responses to one prompt has
rewards r, positive weights w and a reward range [low, high]. The adjusted
rewards z solve

    maximise    sum_i w_i z_i^2
    subject to  low <= z_i <= high,
                sum_i w_i z_i = sum_i w_i r_i          (weighted mean kept),
                r_i > r_j  =>  z_i >= z_j              (order kept),
                r_i = r_j  =>  z_i = z_j               (ties kept).

With the weighted mean fixed, maximising sum w z^2 maximises the weighted
variance. The objective is convex, so the problem is non-convex as a
maximisation; it is solved exactly as follows.

Sort by reward and merge equal rewards into m blocks with weights W_1..W_m and
common values y_1 <= ... <= y_m. The feasible set is the polytope
{low <= y_1 <= ... <= y_m <= high, sum_b W_b y_b = S}. A convex function
attains its maximum over a polytope at a vertex. The m + 1 chain inequalities
have gaps g_0 = y_1 - low, g_b = y_{b+1} - y_b, g_m = high - y_m summing to
high - low; any m of them are linearly independent, so a vertex (m - 1
inequalities tight besides the equality) has at most two non-zero gaps: the
bottom blocks at ``low``, a contiguous run of blocks at one value v, the top
blocks at ``high``. If the run holds two blocks or more and low < v < high,
moving its lower part down by t * W_up and its upper part up by t * W_low
keeps the sum and the order and raises the objective by
t^2 W_low W_up (W_low + W_up) > 0, so the optimum has at most ONE block
strictly between the bounds. Candidate j (block j in the middle) has

    v_j = (S - low * W_below(j) - high * W_above(j)) / W_j,

and the intervals of S covered by the feasible candidates,
[low W_<=j + high W_>j, low W_<j + high W_>=j], tile [low W, high W] in
order, so exactly one candidate is feasible (two at a boundary, where they
give the same z): the optimum is unique. It is found here without a loop:
one sort per group, prefix sums of the weights, v_j for every tie block, and
the candidate with the smallest bound violation (zero up to rounding).
O(n log n) per group, batched over all leading dimensions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _as_group_bound(bound: float | Tensor, rewards: Tensor, name: str) -> Tensor:
    """``bound`` as a tensor that broadcasts against ``rewards`` [..., n] (one value per group)."""
    value = torch.as_tensor(bound, dtype=rewards.dtype, device=rewards.device)
    if value.ndim > 0:
        try:
            value = value.broadcast_to(rewards.shape[:-1])
        except RuntimeError:
            raise ValueError(
                f"{name} of shape {tuple(value.shape)} does not broadcast to the group shape "
                f"{tuple(rewards.shape[:-1])}"
            ) from None
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} must be finite, got {bound!r}")
    return value.unsqueeze(-1) if value.ndim > 0 else value


def _validate(rewards: Tensor, low: Tensor, high: Tensor, weights: Tensor | None) -> None:
    if bool((low >= high).any()):
        raise ValueError(
            f"reward range needs low < high, got low={low.min().item()}, high={high.max().item()}"
        )
    # One pass: a NaN fails both comparisons, so it lands here too.
    if not bool(((rewards >= low) & (rewards <= high)).all()):
        if not torch.isfinite(rewards).all():
            raise ValueError("rewards must be finite (found NaN or infinity)")
        below = int((rewards < low).sum())
        above = int((rewards > high).sum())
        raise ValueError(
            "rewards outside the reward range [low, high] make the adjustment infeasible: "
            f"min reward {rewards.min().item()}, max reward {rewards.max().item()}, "
            f"{below} below low and {above} above high"
        )
    if weights is not None and not bool((weights > 0).all() and torch.isfinite(weights).all()):
        raise ValueError("weights must be finite and > 0")


def reward_variance_increase(
    rewards: Tensor, low: float | Tensor, high: float | Tensor, weights: Tensor | None = None
) -> Tensor:
    """Adjusted rewards z, shape of ``rewards`` [..., n]: the exact solution of the GRPOVI problem.

    Each slice ``rewards[..., :]`` is one group. ``low`` and ``high`` are floats
    or tensors broadcastable to ``rewards.shape[:-1]`` (one range per group);
    ``weights`` (default uniform) broadcasts to ``rewards`` and must be > 0.
    Returns ``rewards`` unchanged for n = 1 and for groups whose rewards are
    all equal. Raises ValueError for rewards outside [low, high], low >= high,
    non-positive weights and non-finite inputs. Integer rewards are promoted
    to the default float dtype.
    """
    if rewards.ndim == 0:
        raise ValueError("rewards must have a group dimension: shape (..., n)")
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    n = rewards.shape[-1]
    if n == 0 or rewards.numel() == 0:
        return rewards.clone()
    lo = _as_group_bound(low, rewards, "low")
    hi = _as_group_bound(high, rewards, "high")
    if weights is None:
        w = torch.ones_like(rewards)
    else:
        try:
            w = torch.as_tensor(weights, device=rewards.device).to(rewards.dtype).broadcast_to(rewards.shape)
        except RuntimeError:
            raise ValueError(
                f"weights of shape {tuple(torch.as_tensor(weights).shape)} do not broadcast to rewards "
                f"{tuple(rewards.shape)}"
            ) from None
    _validate(rewards, lo, hi, None if weights is None else w)

    sorted_r, order = torch.sort(rewards, dim=-1, stable=True)
    sorted_w = w if weights is None else w.gather(-1, order)
    position = torch.arange(n, device=rewards.device).expand_as(sorted_r)

    # Tie blocks. Each block proposes itself as the middle one at its last sorted position;
    # only forward scans are needed because the weight prefix sums never decrease.
    new_value = sorted_r[..., 1:] != sorted_r[..., :-1]
    edge = torch.ones_like(sorted_r[..., :1], dtype=torch.bool)
    is_start = torch.cat([edge, new_value], dim=-1)
    is_end = torch.cat([new_value, edge], dim=-1)
    block_first = torch.where(is_start, position, 0).cummax(dim=-1).values

    cum_w = sorted_w.cumsum(dim=-1)  # weight through this position (= through the block at its end)
    w_below = (cum_w - sorted_w).gather(-1, block_first)
    w_block = cum_w - w_below
    w_above = cum_w[..., -1:] - cum_w
    target = (sorted_w * sorted_r).sum(dim=-1, keepdim=True)

    middle = (target - lo * w_below - hi * w_above) / w_block
    violation = torch.relu(lo - middle) + torch.relu(middle - hi)
    violation = torch.where(is_end, violation, torch.inf)
    chosen = violation.argmin(dim=-1, keepdim=True)  # exactly one block is feasible, up to rounding
    first = block_first.gather(-1, chosen)
    last = chosen
    value = torch.minimum(torch.maximum(middle.gather(-1, chosen), lo), hi)

    adjusted_sorted = torch.where(position < first, lo, torch.where(position > last, hi, value))
    adjusted = torch.empty_like(adjusted_sorted).scatter_(-1, order, adjusted_sorted)
    # One block (n = 1 or all rewards equal): the only feasible point is r itself; return it bit-exact.
    single_block = (first == 0) & (last == n - 1)
    return torch.where(single_block, rewards, adjusted)
