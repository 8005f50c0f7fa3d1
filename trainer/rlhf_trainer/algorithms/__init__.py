"""The trainer's math: advantage estimators, KL estimators, policy/value/offline losses.

Pure torch functions over padded batches; nothing here knows about Ray,
DeepSpeed or transformers. Conventions shared by every function:

- Shapes: B rows (responses), T token positions. ``response_mask`` [B, T] is
  true on response tokens (bool or 0/1). Padding may be left, right or both;
  results never read a padded position (NaN or inf there does not leak) and
  write 0 to padded positions of [B, T] outputs.
- Groups: the n = ``samples_per_prompt`` samples of one prompt are contiguous
  rows, B = prompts * n.
- Registries pick an implementation by the name the job API uses, and an
  unknown name raises ValueError listing the valid ones:
  ``ESTIMATORS`` / ``get_estimator`` (advantages), ``KL_ESTIMATORS`` /
  ``get_kl_estimator``, ``POLICY_LOSS_AGGREGATIONS`` / ``get_loss_aggregation``;
  ``ALGORITHM_ESTIMATORS`` / ``estimator_for_algorithm`` map ``spec.algorithm.name``
  (``ppo`` -> ``gae``, the others to the estimator of the same name) and
  ``default_loss_aggregation`` gives an algorithm's loss aggregation.
- Every advantage estimator has one signature::

      estimator(rewards[B], response_mask[B, T], *, samples_per_prompt: int,
                config: AdvantageConfig, kl: [B, T] | None = None,
                values: [B, T] | None = None) -> AdvantageResult(advantages, returns, metrics)

- Losses return a small dataclass ``(loss, metrics)``: ``loss`` a
  differentiable scalar, ``metrics`` a dict of detached 0-d tensors keyed like
  the telemetry (``actor/clipfrac``, ``critic/vf_loss``, ...).

One step of the RL loop in these terms::

    kl = kl_penalty(old_logprobs, ref_logprobs, config.kl_estimator, mask)       # for kl_in_reward
    result = estimator_for_algorithm(name)(rewards, mask, samples_per_prompt=n,
                                           config=adv_config, kl=kl, values=values)
    out = ppo_policy_loss(logprobs, old_logprobs, result.advantages, mask,
                          clip_low=..., clip_high=..., loss_agg=default_loss_aggregation(name),
                          max_response_length=...)
    loss = out.loss + kl_coef * kl_loss(logprobs, ref_logprobs, mask, "k3")     # when the KL is a loss
"""

# Importing the estimators registers them in ESTIMATORS.
from .advantages import dr_grpo, gae, grpo, grpovi, reinforce_pp, reinforce_pp_baseline, rloo
from .aggregation import POLICY_LOSS_AGGREGATIONS, aggregate_loss, get_loss_aggregation
from .kl import KL_ESTIMATORS, get_kl_estimator, kl_k1, kl_k2, kl_k3, kl_loss, kl_penalty
from .logprobs import entropy_from_logits, logprobs_from_logits
from .masking import masked_mean, masked_sum, masked_var, masked_whiten
from .offline_losses import OfflineLossOutput, dpo_loss, pairwise_reward_loss, sequence_logprobs, sft_loss
from .policy_loss import PolicyLossOutput, ppo_policy_loss
from .registry import (
    ALGORITHM_ESTIMATORS,
    ESTIMATORS,
    AdvantageConfig,
    AdvantageEstimator,
    AdvantageResult,
    default_loss_aggregation,
    estimator_for_algorithm,
    get_estimator,
    register_estimator,
)
from .returns import discounted_returns, generalized_advantage_estimation, token_level_rewards
from .rollout_correction import MISMATCH_METRICS, ImportanceWeights, truncated_importance_weights
from .rvi import reward_variance_increase
from .value_loss import ValueLossOutput, explained_variance, value_loss

__all__ = [
    "ALGORITHM_ESTIMATORS",
    "ESTIMATORS",
    "MISMATCH_METRICS",
    "KL_ESTIMATORS",
    "POLICY_LOSS_AGGREGATIONS",
    "AdvantageConfig",
    "AdvantageEstimator",
    "AdvantageResult",
    "ImportanceWeights",
    "OfflineLossOutput",
    "PolicyLossOutput",
    "ValueLossOutput",
    "aggregate_loss",
    "default_loss_aggregation",
    "discounted_returns",
    "dpo_loss",
    "dr_grpo",
    "entropy_from_logits",
    "estimator_for_algorithm",
    "explained_variance",
    "gae",
    "generalized_advantage_estimation",
    "get_estimator",
    "get_kl_estimator",
    "get_loss_aggregation",
    "grpo",
    "grpovi",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_loss",
    "kl_penalty",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "pairwise_reward_loss",
    "ppo_policy_loss",
    "register_estimator",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "reward_variance_increase",
    "rloo",
    "sequence_logprobs",
    "sft_loss",
    "token_level_rewards",
    "truncated_importance_weights",
    "value_loss",
]
