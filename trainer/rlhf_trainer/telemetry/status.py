"""The trainer-owned part of the RLHFJob status, as pure functions of what the trainer knows."""

from __future__ import annotations

import math
from typing import Any

from ..api.status import TRAINER_FIELDS, CheckpointRef, Progress, TrainerFailure, rfc3339

MAX_FAILURE_MESSAGE = 1024


def eta_seconds(step_times: list[float], step: int, total_steps: int) -> float | None:
    """Mean step time x steps left; None before the first timed step."""
    if not step_times:
        return None
    return max(total_steps - step, 0) * (sum(step_times) / len(step_times))


def finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """JSON and the CRD's number type have no NaN or infinity: such values are left out."""
    return {key: float(value) for key, value in metrics.items() if math.isfinite(value)}


def progress(
    step: int, total_steps: int, eta: float | None, reward: float | None, now: float
) -> dict[str, Any]:
    percent = 100.0 * min(step, total_steps) / total_steps if total_steps else 0.0
    return Progress(
        step=step,
        total_steps=total_steps,
        percent=round(percent, 2),
        eta_seconds=None if eta is None else round(eta, 1),
        updated_at=rfc3339(now),
        summary=f"{step}/{total_steps}",
        reward=reward if reward is not None and math.isfinite(reward) else None,
    ).to_wire()


def checkpoint_entry(
    step: int, path: str, hf_path: str | None, now: float, attempt: int | None = None, run: int | None = None
) -> dict[str, Any]:
    return CheckpointRef(
        step=step, path=path, time=rfc3339(now), hf_path=hf_path, attempt=attempt, run=run
    ).to_wire()


def add_checkpoint(
    checkpoints: list[dict[str, Any]], entry: dict[str, Any], keep: int
) -> list[dict[str, Any]]:
    """The last `keep` checkpoints after saving `entry`. Entries at or past its step came from an
    earlier attempt that went further before failing; this attempt replaced them."""
    kept = [c for c in checkpoints if c["step"] < entry["step"]]
    return [*kept, entry][-keep:]


def trainer_status(
    progress_fields: dict[str, Any] | None,
    metrics: dict[str, float],
    checkpoints: list[dict[str, Any]],
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The merge-patch body: only the trainer-owned fields, and only those with content (an empty
    list would erase what an earlier attempt recorded)."""
    status: dict[str, Any] = {}
    if progress_fields is not None:
        status["progress"] = progress_fields
    if metrics:
        status["metrics"] = finite_metrics(metrics)
    if checkpoints:
        status["checkpoints"] = checkpoints
        status["latestCheckpoint"] = checkpoints[-1]
    if resume is not None:
        status["resume"] = resume
    assert set(status) <= set(TRAINER_FIELDS)
    return status


def should_push(now: float, last_push: float | None, min_interval_s: float, force: bool) -> bool:
    """Throttle of the Kubernetes sink: at most one patch per `min_interval_s`, except forced
    pushes (final step, checkpoint, close) and the first."""
    return force or last_push is None or now - last_push >= min_interval_s


def failure_entry(attempt: int, permanent: bool, reason: str, message: str) -> dict[str, Any]:
    """status.failure: what the trainer stopped on. `permanent` tells the operator that no
    restart can fix it. The message is cut to the field's bound, keeping its start."""
    if len(message) > MAX_FAILURE_MESSAGE:
        message = message[: MAX_FAILURE_MESSAGE - 3] + "..."
    return TrainerFailure(attempt=attempt, permanent=permanent, reason=reason, message=message).to_wire()
