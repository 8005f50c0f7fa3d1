"""Advantage estimators, one function each, registered by their API name.

Every estimator has the signature of :class:`AdvantageEstimator`::

    fn(rewards, response_mask, *, samples_per_prompt, config, kl=None, values=None) -> AdvantageResult

- ``rewards`` [B]: one scalar score per response (the combined reward).
- ``response_mask`` [B, T]: true on response tokens; any padding layout.
- ``samples_per_prompt`` n: the samples of one prompt are contiguous rows,
  B = prompts * n; group estimators normalise within each block of n rows.
- ``kl`` [B, T]: per-token KL to the reference (see ``kl.kl_penalty``); read
  only when ``config.kl_in_reward`` and ``config.kl_coef != 0``, and then
  required. With ``kl_in_reward`` false the KL goes into the loss instead
  (``kl.kl_loss``) and estimators ignore it.
- ``values`` [B, T]: critic values, required by ``gae`` only.

Outcome estimators (grpo, dr_grpo, rloo, grpovi) fold the KL as a sequence
penalty, ``score - kl_coef * sum_t kl_t``, before the group statistics and
give every token of a response the same advantage; the token-level ones (gae,
reinforce_pp, reinforce_pp_baseline) put ``-kl_coef * kl_t`` on each token and
the score on the last one. For estimators without a critic ``returns`` is the
quantity the advantage came from (see each docstring); padded positions of
``advantages`` and ``returns`` are 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .masking import masked_fill_zero, masked_mean, masked_sum, masked_var, masked_whiten
from .registry import AdvantageConfig, AdvantageResult, register_estimator
from .returns import discounted_returns, generalized_advantage_estimation, token_level_rewards
from .rvi import reward_variance_increase

# ---------------------------------------------------------------- shared steps


def _check_batch(rewards: Tensor, response_mask: Tensor, samples_per_prompt: int, group: bool) -> Tensor:
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be [B], got shape {tuple(rewards.shape)}")
    if response_mask.ndim != 2 or response_mask.shape[0] != rewards.shape[0]:
        raise ValueError(
            f"response_mask must be [B, T] with B = {rewards.shape[0]}, got {tuple(response_mask.shape)}"
        )
    if samples_per_prompt < 1 or rewards.shape[0] % samples_per_prompt != 0:
        raise ValueError(
            f"samples_per_prompt={samples_per_prompt} must be >= 1 and divide the batch size {rewards.shape[0]}"
        )
    if group and samples_per_prompt < 2:
        raise ValueError(f"group estimators need samples_per_prompt >= 2, got {samples_per_prompt}")
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    return rewards


def _kl_for_reward(kl: Tensor | None, response_mask: Tensor, config: AdvantageConfig) -> Tensor | None:
    """The KL tensor when it must be folded into the reward, else None."""
    if not config.kl_in_reward or config.kl_coef == 0.0:
        return None
    if kl is None:
        raise ValueError("kl_in_reward with kl_coef > 0 needs the per-token kl tensor, got kl=None")
    if kl.shape != response_mask.shape:
        raise ValueError(f"kl shape {tuple(kl.shape)} != response_mask shape {tuple(response_mask.shape)}")
    return kl


def _sequence_scores(
    rewards: Tensor, response_mask: Tensor, kl: Tensor | None, config: AdvantageConfig
) -> Tensor:
    """``score - kl_coef * sum_t kl_t`` when the KL is folded in, else the score."""
    kl = _kl_for_reward(kl, response_mask, config)
    if kl is None:
        return rewards
    return rewards - config.kl_coef * masked_sum(kl.to(rewards.dtype), response_mask, dim=-1)


def _per_token(sequence_advantages: Tensor, response_mask: Tensor) -> Tensor:
    """Broadcast one advantage per row [B] onto the row's response tokens [B, T]."""
    return masked_fill_zero(sequence_advantages.unsqueeze(-1).expand(response_mask.shape), response_mask)


def _summary(advantages: Tensor, returns: Tensor, response_mask: Tensor) -> dict[str, Tensor]:
    return {
        "advantages/mean": masked_mean(advantages, response_mask).detach(),
        "advantages/std": masked_var(advantages, response_mask).sqrt().detach(),
        "returns/mean": masked_mean(returns, response_mask).detach(),
    }


def _group_result(
    sequence_advantages: Tensor,
    grouped_scores: Tensor,
    response_mask: Tensor,
    extra: dict[str, Tensor] | None = None,
) -> AdvantageResult:
    advantages = _per_token(sequence_advantages, response_mask)
    metrics = _summary(advantages, advantages, response_mask)
    all_equal = (grouped_scores == grouped_scores[:, :1]).all(dim=-1)
    metrics["groups/all_equal_fraction"] = all_equal.to(grouped_scores.dtype).mean().detach()
    metrics.update(extra or {})
    return AdvantageResult(advantages=advantages, returns=advantages.clone(), metrics=metrics)


def _group_centered(grouped: Tensor) -> Tensor:
    """``x - mean(group)`` per row of ``grouped`` [P, n]; exactly 0 for a group of equal values.

    The mean of equal floats is not always bit-equal to them (0.7 * 3 / 3), and
    dividing that rounding error by a tiny std would invent a large advantage.
    """
    constant = (grouped == grouped[:, :1]).all(dim=-1, keepdim=True)
    return torch.where(constant, 0.0, grouped - grouped.mean(dim=-1, keepdim=True))


def _group_normalise(grouped: Tensor, eps: float) -> Tensor:
    """``(x - mean) / (std + eps)`` within each row of ``grouped`` [P, n] (unbiased std)."""
    return _group_centered(grouped) / (grouped.std(dim=-1, keepdim=True) + eps)


# ---------------------------------------------------------------- estimators


@register_estimator("gae")
def gae(
    rewards: Tensor,
    response_mask: Tensor,
    *,
    samples_per_prompt: int,
    config: AdvantageConfig,
    kl: Tensor | None = None,
    values: Tensor | None = None,
) -> AdvantageResult:
    """PPO with a critic: GAE over token rewards, advantages whitened over the batch.

    Token rewards ``r_t = -kl_coef * kl_t (+ score on the last token)``;
    ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = sum_l (gamma lam)^l delta_{t+l}``;
    ``returns = A + V`` (unwhitened, the critic's target); advantages then
    whitened over all response tokens. With ``config.normalize_reward`` the
    scores are first whitened over the batch. Schulman et al. 2016 (arXiv:1506.02438),
    Ouyang et al. 2022 (arXiv:2203.02155).
    """
    rewards = _check_batch(rewards, response_mask, samples_per_prompt, group=False)
    if values is None:
        raise ValueError("advantage estimator 'gae' needs critic values, got values=None")
    if values.shape != response_mask.shape:
        raise ValueError(
            f"values shape {tuple(values.shape)} != response_mask shape {tuple(response_mask.shape)}"
        )
    if config.normalize_reward:
        rewards = masked_whiten(rewards, torch.ones_like(rewards, dtype=torch.bool))
    token_rewards = token_level_rewards(
        rewards, response_mask, _kl_for_reward(kl, response_mask, config), config.kl_coef
    )
    raw_advantages, returns = generalized_advantage_estimation(
        token_rewards, values, response_mask, gamma=config.gamma, lam=config.lam
    )
    advantages = masked_whiten(raw_advantages, response_mask)
    return AdvantageResult(advantages, returns, _summary(advantages, returns, response_mask))


@register_estimator("grpo")
def grpo(
    rewards: Tensor,
    response_mask: Tensor,
    *,
    samples_per_prompt: int,
    config: AdvantageConfig,
    kl: Tensor | None = None,
    values: Tensor | None = None,
) -> AdvantageResult:
    """GRPO outcome supervision: ``A_i = (r_i - mean(r_group)) / (std(r_group) + eps)``.

    Unbiased std within each group of ``samples_per_prompt``; the same A_i on
    every token of response i. Shao et al. 2024, DeepSeekMath (arXiv:2402.03300).
    """
    rewards = _check_batch(rewards, response_mask, samples_per_prompt, group=True)
    grouped = _sequence_scores(rewards, response_mask, kl, config).view(-1, samples_per_prompt)
    return _group_result(_group_normalise(grouped, config.eps).reshape(-1), grouped, response_mask)


@register_estimator("dr_grpo")
def dr_grpo(
    rewards: Tensor,
    response_mask: Tensor,
    *,
    samples_per_prompt: int,
    config: AdvantageConfig,
    kl: Tensor | None = None,
    values: Tensor | None = None,
) -> AdvantageResult:
    """Dr. GRPO: ``A_i = r_i - mean(r_group)``, no division by the std.

    Paired with the ``seq-mean-token-sum-norm`` loss aggregation, which removes
    GRPO's length bias as the dropped std removes its difficulty bias.
    Liu et al. 2025, "Understanding R1-Zero-Like Training" (arXiv:2503.20783).
    """
    rewards = _check_batch(rewards, response_mask, samples_per_prompt, group=True)
    grouped = _sequence_scores(rewards, response_mask, kl, config).view(-1, samples_per_prompt)
    return _group_result(_group_centered(grouped).reshape(-1), grouped, response_mask)


@register_estimator("rloo")
def rloo(
    rewards: Tensor,
    response_mask: Tensor,
    *,
    samples_per_prompt: int,
    config: AdvantageConfig,
    kl: Tensor | None = None,
    values: Tensor | None = None,
) -> AdvantageResult:
    """REINFORCE leave-one-out: ``A_i = r_i - (sum_{j != i} r_j) / (n - 1)``.

    Equivalently ``n / (n - 1) * (r_i - mean(r_group))``. Kool et al. 2019
    ("Buy 4 REINFORCE Samples, Get a Baseline for Free!"), Ahmadian et al. 2024
    (arXiv:2402.14740).
    """
    rewards = _check_batch(rewards, response_mask, samples_per_prompt, group=True)
    grouped = _sequence_scores(rewards, response_mask, kl, config).view(-1, samples_per_prompt)
    n = samples_per_prompt
    # r_i - (sum_{j != i} r_j) / (n - 1) == n / (n - 1) * (r_i - mean): written so equal rewards give 0.
    return _group_result((_group_centered(grouped) * (n / (n - 1))).reshape(-1), grouped, response_mask)


def _reinforce_pp_result(
    scores: Tensor, response_mask: Tensor, kl: Tensor | None, config: AdvantageConfig
) -> AdvantageResult:
    token_rewards = token_level_rewards(
        scores, response_mask, _kl_for_reward(kl, response_mask, config), config.kl_coef
    )
    returns = discounted_returns(token_rewards, response_mask, gamma=config.gamma)
    advantages = masked_whiten(returns, response_mask)
    return AdvantageResult(advantages, returns, _summary(advantages, returns, response_mask))


@register_estimator("reinforce_pp")
def reinforce_pp(
    rewards: Tensor,
    response_mask: Tensor,
    *,
    samples_per_prompt: int,
    config: AdvantageConfig,
    kl: Tensor | None = None,
    values: Tensor | None = None,
) -> AdvantageResult:
    """REINFORCE++: token returns ``G_t = sum_{s >= t} gamma^(s-t) r_s``, whitened over the batch.

    Token rewards ``r_t = -kl_coef * kl_t`` plus the score on the last token;
    ``returns = G`` and ``advantages = (G - mean) / std`` over all response
    tokens of the batch (global, not per group). Hu 2025, "REINFORCE++"
    (arXiv:2501.03262).
    """
    rewards = _check_batch(rewards, response_mask, samples_per_prompt, group=False)
    return _reinforce_pp_result(rewards, response_mask, kl, config)


@register_estimator("reinforce_pp_baseline")
def reinforce_pp_baseline(
    rewards: Tensor,
    response_mask: Tensor,
    *,
    samples_per_prompt: int,
    config: AdvantageConfig,
    kl: Tensor | None = None,
    values: Tensor | None = None,
) -> AdvantageResult:
    """REINFORCE++ with a group baseline: score minus its group mean, then as ``reinforce_pp``.

    ``score_i - mean(score_group)`` on the last token, ``-kl_coef * kl_t`` on
    every token, discounted returns, global whitening. Hu 2025 (arXiv:2501.03262).
    """
    rewards = _check_batch(rewards, response_mask, samples_per_prompt, group=True)
    grouped = rewards.view(-1, samples_per_prompt)
    return _reinforce_pp_result(_group_centered(grouped).reshape(-1), response_mask, kl, config)


def _grpovi_range(rewards: Tensor, config: AdvantageConfig) -> tuple[float, float]:
    if config.reward_range == "fixed":
        assert config.reward_low is not None and config.reward_high is not None  # checked by the config
        return config.reward_low, config.reward_high
    return rewards.min().item(), rewards.max().item()


@register_estimator("grpovi")
def grpovi(
    rewards: Tensor,
    response_mask: Tensor,
    *,
    samples_per_prompt: int,
    config: AdvantageConfig,
    kl: Tensor | None = None,
    values: Tensor | None = None,
) -> AdvantageResult:
    """GRPO with reward variance increase: adjust each group's rewards, then normalise as GRPO.

    ``z = reward_variance_increase(r_group, low, high)`` (see ``rvi``): the
    order- and mean-preserving adjustment within [low, high] of largest
    variance; then ``A_i = (z_i - mean(z)) / (std(z) + eps)``. The range is
    ``[config.reward_low, config.reward_high]`` (``reward_range='fixed'``) or the
    batch's min and max (``'batch'``). The adjustment applies to the reward
    itself; a KL folded into the reward is subtracted after it. Yang et al.
    2025 (arXiv:2505.23247).
    """
    rewards = _check_batch(rewards, response_mask, samples_per_prompt, group=True)
    grouped = rewards.view(-1, samples_per_prompt)
    low, high = _grpovi_range(rewards, config)
    if low < high:
        try:
            adjusted = reward_variance_increase(grouped, low, high)
        except ValueError as err:
            raise ValueError(
                f"grpovi with reward range [{low}, {high}] ({config.reward_range}): {err}"
            ) from None
    else:  # batch mode with one reward value everywhere: nothing to spread, every advantage is 0
        adjusted = grouped
    adjusted_scores = _sequence_scores(adjusted.reshape(-1), response_mask, kl, config).view(
        -1, samples_per_prompt
    )
    extra = {
        "rvi/reward_std_before": grouped.std(dim=-1).mean().detach(),
        "rvi/reward_std_after": adjusted.std(dim=-1).mean().detach(),
    }
    sequence_advantages = _group_normalise(adjusted_scores, config.eps).reshape(-1)
    return _group_result(sequence_advantages, adjusted_scores, response_mask, extra)
