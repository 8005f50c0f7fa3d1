"""Token-level rewards and the backward recursions over them (discounted returns, GAE).

Time runs over the response tokens of a row, i.e. over the positions where
``response_mask`` is true, in order. Padding may sit on the left, on the
right, or both; a masked position inside a row is skipped (the recursion
carries its state across it). Padded positions of every output are 0, and
nothing read from a padded position (values, KL) reaches a valid one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .masking import as_bool_mask, masked_fill_zero


def last_token_index(response_mask: Tensor) -> Tensor:
    """Index [B] of the last true position of each row of ``response_mask`` [B, T] (0 for empty rows)."""
    mask = as_bool_mask(response_mask)
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, -1).max(dim=-1).values.clamp_min(0)


def token_level_rewards(
    scores: Tensor, response_mask: Tensor, kl: Tensor | None = None, kl_coef: float = 0.0
) -> Tensor:
    """Per-token rewards [B, T]: ``-kl_coef * kl_t`` on every response token, plus the score on the last.

    The sequence-level ``scores`` [B] land on each row's last response token
    (the token that completed the response, where the reward model looked).
    """
    mask = as_bool_mask(response_mask)
    if scores.shape != mask.shape[:1]:
        raise ValueError(f"scores shape {tuple(scores.shape)} must be [B] with B = {mask.shape[0]}")
    rewards = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
    if kl is not None and kl_coef != 0.0:
        rewards = rewards - kl_coef * masked_fill_zero(kl.to(scores.dtype), mask)
    last = last_token_index(mask).unsqueeze(-1)
    has_tokens = mask.any(dim=-1, keepdim=True)
    placed = torch.where(has_tokens, scores.unsqueeze(-1), torch.zeros_like(scores).unsqueeze(-1))
    return rewards.scatter_add(-1, last, placed)


def discounted_returns(rewards: Tensor, response_mask: Tensor, gamma: float = 1.0) -> Tensor:
    """``G_t = r_t + gamma * G_{t+1}`` over the response tokens of each row; 0 at padding."""
    mask = as_bool_mask(response_mask)
    rewards = masked_fill_zero(rewards, mask)
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[-1])):
        valid = mask[:, t]
        running = torch.where(valid, rewards[:, t] + gamma * running, running)
        returns[:, t] = torch.where(valid, running, 0.0)
    return returns


def generalized_advantage_estimation(
    rewards: Tensor, values: Tensor, response_mask: Tensor, gamma: float = 1.0, lam: float = 1.0
) -> tuple[Tensor, Tensor]:
    """GAE (Schulman et al. 2016, arXiv:1506.02438): ``(advantages, returns)`` [B, T].

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V`` after the last response
    token = 0 (the episode ends there), ``A_t = delta_t + gamma * lam * A_{t+1}``,
    ``returns_t = A_t + V_t`` (the critic's regression target).
    """
    mask = as_bool_mask(response_mask)
    rewards = masked_fill_zero(rewards, mask)
    values = masked_fill_zero(values.to(rewards.dtype), mask)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[-1])):
        valid = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        next_advantage = torch.where(valid, advantage, next_advantage)
        next_value = torch.where(valid, values[:, t], next_value)
        advantages[:, t] = torch.where(valid, advantage, 0.0)
    returns = masked_fill_zero(advantages + values, mask)
    return advantages, returns
