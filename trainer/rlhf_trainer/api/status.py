"""The RLHFJob status. The operator owns phase, conditions, rayJob, attempt, times and message;
the trainer owns progress, metrics, checkpoints, latestCheckpoint and failure. Neither writes the other's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import Field

from .base import ApiModel


def rfc3339(moment: datetime | float) -> str:
    """A status timestamp (RFC 3339, UTC, seconds) of a datetime or a Unix time, as Kubernetes
    writes them: `2026-01-02T03:04:05Z`. The one formatter of the operator and the trainer."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, tz=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Queued: held by Kueue (spec.queueName) until its LocalQueue admits it, or again after a preemption.
Phase = Literal[
    "Pending", "Queued", "Initializing", "Running", "Retrying", "Suspended", "Succeeded", "Failed"
]
PHASES: tuple[str, ...] = Phase.__args__  # type: ignore[attr-defined]
TERMINAL_PHASES = ("Succeeded", "Failed")

OPERATOR_FIELDS = (
    "phase",
    "conditions",
    "observedGeneration",
    "attempt",
    "rayJob",
    "startTime",
    "completionTime",
    "message",
)
TRAINER_FIELDS = ("progress", "metrics", "checkpoints", "latestCheckpoint", "failure", "resume")


class Condition(ApiModel):
    type: str = Field(description="Condition type, e.g. Ready, Running, Succeeded, Failed, RayJobReady.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str | None = Field(default=None, description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, description="Spec generation the condition reflects."
    )


class RayJobRef(ApiModel):
    name: str | None = Field(default=None, description="Name of the current RayJob.")
    job_status: str | None = Field(default=None, description="RayJob status.jobStatus (the Ray job's state).")
    deployment_status: str | None = Field(
        default=None, description="RayJob status.jobDeploymentStatus (the Ray cluster's lifecycle)."
    )
    ray_cluster_name: str | None = Field(default=None, description="Name of the RayCluster serving the job.")
    dashboard_url: str | None = Field(
        default=None, alias="dashboardURL", description="Ray dashboard address."
    )
    job_id: str | None = Field(default=None, description="Ray submission id.")


class Progress(ApiModel):
    step: int = Field(default=0, ge=0, description="RL steps completed.")
    total_steps: int = Field(default=0, ge=0, description="RL steps planned (spec.training.maxSteps).")
    percent: float = Field(default=0.0, ge=0, le=100, description="step / totalSteps x 100.")
    eta_seconds: float | None = Field(default=None, ge=0, description="Estimated seconds to completion.")
    updated_at: str | None = Field(default=None, description="When the trainer last reported (RFC 3339).")
    summary: str | None = Field(default=None, description="step/totalSteps, shown by kubectl get.")
    reward: float | None = Field(default=None, description="Latest reward/mean, shown by kubectl get.")


class CheckpointRef(ApiModel):
    step: int = Field(ge=0, description="Step the checkpoint was taken after.")
    path: str = Field(description="Directory of the checkpoint.")
    time: str | None = Field(default=None, description="When it was written (RFC 3339).")
    hf_path: str | None = Field(
        default=None, alias="hfPath", description="HF-format export of the actor, if any."
    )
    attempt: int | None = Field(default=None, ge=0, description="The attempt that committed it.")
    run: int | None = Field(
        default=None,
        ge=0,
        description="The run of that attempt that committed it (each start of the trainer takes the next).",
    )


class SkippedCheckpoint(ApiModel):
    path: str = Field(description="The committed checkpoint that was not resumed from.")
    reason: str = Field(default="", max_length=1024, description="Why it failed to download or load.")


class ResumeRecord(ApiModel):
    """Where the current attempt resumed from, and the newer committed checkpoints it had to skip."""

    attempt: int = Field(ge=0, description="The attempt that resumed.")
    path: str | None = Field(default=None, description="The checkpoint it resumed from (unset: the start).")
    step: int = Field(default=0, ge=0, description="The step of that checkpoint.")
    skipped: list[SkippedCheckpoint] = Field(
        default_factory=list, max_length=16, description="Newer committed checkpoints that failed to load."
    )


class TrainerFailure(ApiModel):
    """What the trainer reports when it stops on an error. `permanent` errors (a bad model path, an
    unimportable reward function, an engine that cannot run here) end the job Failed without a
    restart: no retry can fix them."""

    attempt: int = Field(ge=0, description="The attempt that failed.")
    permanent: bool = Field(description="True when no retry can fix the error (configuration, preflight).")
    reason: str = Field(max_length=64, description="CamelCase reason, e.g. PreflightFailed.")
    message: str = Field(default="", max_length=1024, description="What failed and where (bounded).")


class RLHFJobStatus(ApiModel):
    phase: Phase | None = Field(default=None, description="Lifecycle phase of the job.")
    conditions: list[Condition] = Field(
        default_factory=list, max_length=32, description="Observations of the job's state."
    )
    observed_generation: int | None = Field(default=None, description="Spec generation last reconciled.")
    attempt: int | None = Field(default=None, ge=0, description="Current attempt (0 first; +1 per restart).")
    ray_job: RayJobRef | None = Field(default=None, description="The RayJob running the current attempt.")
    start_time: str | None = Field(default=None, description="When the first attempt started running.")
    completion_time: str | None = Field(default=None, description="When the job succeeded or failed.")
    message: str | None = Field(default=None, description="Latest human-readable message.")
    progress: Progress | None = Field(default=None, description="Training progress (written by the trainer).")
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="Latest scalar training metrics, e.g. reward/mean (written by the trainer).",
    )
    checkpoints: list[CheckpointRef] = Field(
        default_factory=list, max_length=1000, description="The last K checkpoints."
    )
    latest_checkpoint: CheckpointRef | None = Field(default=None, description="The newest checkpoint.")
    failure: TrainerFailure | None = Field(
        default=None, description="The trainer's report of the error it stopped on (written by the trainer)."
    )
    resume: ResumeRecord | None = Field(
        default=None,
        description="Where the current attempt resumed from, and any newer checkpoint it skipped (written by "
        "the trainer).",
    )
