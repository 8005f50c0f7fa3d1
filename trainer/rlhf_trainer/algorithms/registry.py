"""Advantage estimator plumbing: the config, the result, the registry and the API names.

The estimators themselves live in ``advantages`` and register here by name
with ``@register_estimator``; the job API's ``spec.algorithm.name`` maps to an
estimator through ``ALGORITHM_ESTIMATORS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from torch import Tensor

RewardRangeMode = Literal["batch", "fixed"]


@dataclass(frozen=True)
class AdvantageConfig:
    """Hyperparameters of the advantage estimators (each reads the ones it documents)."""

    gamma: float = 1.0
    """Discount over tokens (gae, reinforce_pp, reinforce_pp_baseline)."""
    lam: float = 1.0
    """GAE lambda (gae)."""
    kl_coef: float = 0.0
    """KL coefficient used when ``kl_in_reward``."""
    kl_in_reward: bool = False
    """Fold the KL into the reward (true) or leave it to a KL loss term (false)."""
    reward_range: RewardRangeMode = "batch"
    """grpovi: ``fixed`` uses [reward_low, reward_high]; ``batch`` the min/max of the batch rewards."""
    reward_low: float | None = None
    """grpovi with ``reward_range='fixed'``: lowest possible reward."""
    reward_high: float | None = None
    """grpovi with ``reward_range='fixed'``: highest possible reward."""
    normalize_reward: bool = False
    """gae: whiten the sequence rewards over the batch (zero mean, unit variance) before GAE."""
    eps: float = 1e-6
    """Added to the group std before dividing (grpo, grpovi)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {self.lam}")
        if self.kl_coef < 0.0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if self.eps < 0.0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if self.reward_range not in ("batch", "fixed"):
            raise ValueError(f"reward_range must be 'batch' or 'fixed', got {self.reward_range!r}")
        if self.reward_range == "fixed":
            if self.reward_low is None or self.reward_high is None:
                raise ValueError("reward_range='fixed' needs reward_low and reward_high")
            if not self.reward_low < self.reward_high:
                raise ValueError(
                    f"reward_low must be < reward_high, got [{self.reward_low}, {self.reward_high}]"
                )


@dataclass
class AdvantageResult:
    """What an estimator returns. ``metrics`` values are 0-d tensors (call ``.item()`` to log)."""

    advantages: Tensor
    returns: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class AdvantageEstimator(Protocol):
    def __call__(
        self,
        rewards: Tensor,
        response_mask: Tensor,
        *,
        samples_per_prompt: int,
        config: AdvantageConfig,
        kl: Tensor | None = None,
        values: Tensor | None = None,
    ) -> AdvantageResult: ...


ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_estimator(name: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator: register an estimator under its API name (names are unique)."""

    def wrap(fn: AdvantageEstimator) -> AdvantageEstimator:
        if name in ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ESTIMATORS[name] = fn
        return fn

    return wrap


def get_estimator(name: str) -> AdvantageEstimator:
    """The estimator registered as ``name``; ValueError listing the valid names otherwise."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown advantage estimator {name!r}; valid: {', '.join(sorted(ESTIMATORS))}"
        ) from None


# ---------------------------------------------------------------- API names

ALGORITHM_ESTIMATORS: dict[str, str] = {
    "ppo": "gae",
    "grpo": "grpo",
    "dr_grpo": "dr_grpo",
    "reinforce_pp": "reinforce_pp",
    "reinforce_pp_baseline": "reinforce_pp_baseline",
    "rloo": "rloo",
    "grpovi": "grpovi",
}
"""API ``spec.algorithm.name`` -> registered estimator name."""


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHM_ESTIMATORS:
        valid = ", ".join(sorted(ALGORITHM_ESTIMATORS))
        raise ValueError(f"unknown algorithm {algorithm!r}; valid: {valid}")


def estimator_for_algorithm(algorithm: str) -> AdvantageEstimator:
    """The estimator an API algorithm name uses (``ppo`` -> ``gae``, the others by the same name)."""
    _check_algorithm(algorithm)
    return get_estimator(ALGORITHM_ESTIMATORS[algorithm])


def default_loss_aggregation(algorithm: str) -> str:
    """``seq-mean-token-sum-norm`` for ``dr_grpo`` (its length-unbiased loss), ``token-mean`` otherwise."""
    _check_algorithm(algorithm)
    return "seq-mean-token-sum-norm" if algorithm == "dr_grpo" else "token-mean"
