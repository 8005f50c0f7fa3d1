"""Rewards: Python functions, remote HTTP endpoints and reward models, combined with weights.

Reward models (torch) load only when a job uses one: `rlhf_trainer.rewards.model`.
"""

from .errors import RewardConfigError, RewardError
from .naming import reward_source_names
from .reward_set import RewardResult, RewardSet, build_rewards

__all__ = [
    "RewardConfigError",
    "RewardError",
    "RewardResult",
    "RewardSet",
    "build_rewards",
    "reward_source_names",
]
