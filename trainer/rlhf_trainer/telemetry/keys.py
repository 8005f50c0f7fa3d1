"""The per-step metric keys (contract, DESIGN "Telemetry") and their Prometheus names."""

from __future__ import annotations

# The timed phases of one RL step: `timing/<phase>_s`.
TIMING_PHASES = (
    "generate",
    "reward",
    "reference",
    "values",
    "advantage",
    "train_actor",
    "train_critic",
    "weight_sync",
    "checkpoint",
)

METRIC_KEYS: tuple[str, ...] = (
    "reward/mean",
    "reward/std",
    "kl/mean",
    "actor/pg_loss",
    "actor/clipfrac",
    "actor/entropy",
    "actor/grad_norm",
    "critic/vf_loss",
    "response_length/mean",
    *(f"timing/{phase}_s" for phase in TIMING_PHASES),
    "timing/step_s",
    "perf/tokens_per_s",
    "perf/samples_per_s",
)

PREFIX = "rlhf_"
STEP_GAUGE = "rlhf_step"
TOTAL_STEPS_GAUGE = "rlhf_total_steps"
SOURCE_REWARD_GAUGE = "rlhf_reward_source_mean"
LABELS = ("namespace", "job", "algorithm")


def prometheus_name(key: str) -> str:
    """`reward/mean` -> `rlhf_reward_mean`."""
    return PREFIX + key.replace("/", "_")


def metric_names() -> list[str]:
    """Every Prometheus metric name the trainer exports (the dashboard and alerts may use these)."""
    return [prometheus_name(key) for key in METRIC_KEYS] + [
        STEP_GAUGE,
        TOTAL_STEPS_GAUGE,
        SOURCE_REWARD_GAUGE,
    ]
