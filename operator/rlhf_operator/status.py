"""RayJob status -> RLHFJob phase and conditions (pure).

KubeRay reports two levels: `jobDeploymentStatus` (the RayCluster's lifecycle: New, Initializing,
Running, Complete, Failed, ValidationFailed, Suspending, Suspended, Retrying, Waiting) and
`jobStatus` (the Ray job's own state: "", PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED). They stay
apart here too: the `RayClusterReady` condition reports the infrastructure, `Running` reports
training, and `Succeeded`/`Failed` appear when the job ends. `attempt_state` is the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rlhf_trainer.api.status import OPERATOR_FIELDS

CLUSTER_READY = "RayClusterReady"
RUNNING = "Running"
SUSPENDED = "Suspended"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
SPEC_CHANGE_REFUSED = "SpecChangeRefused"

JOB_TERMINAL = ("STOPPED", "SUCCEEDED", "FAILED")
# KubeRay failure reasons a new attempt would only repeat: the deadline covers the whole job,
# and a RayJob that failed validation fails again.
NOT_RETRIED = ("DeadlineExceeded", "PreRunningDeadlineExceeded", "ValidationFailed")


@dataclass(frozen=True)
class Cond:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str = ""


@dataclass(frozen=True)
class AttemptState:
    """What one RayJob's status says about its attempt."""

    phase: str | None  # RLHFJob phase of a live attempt; None: unknown KubeRay state, keep the old one
    cluster: Cond
    training: Cond
    outcome: str | None = None  # "succeeded" | "failed" once KubeRay has finished the attempt
    retryable: bool = False
    reason: str = ""  # why the attempt ended
    message: str = ""


def _cluster(status: str, reason: str, message: str) -> Cond:
    return Cond(CLUSTER_READY, status, reason, message)


def _training(status: str, reason: str, message: str) -> Cond:
    return Cond(RUNNING, status, reason, message)


def attempt_state(
    job_status: str | None, deployment_status: str | None, reason: str = "", message: str = ""
) -> AttemptState:
    """The table: (jobStatus, jobDeploymentStatus) of KubeRay v1 -> the attempt's state."""
    js, ds = job_status or "", deployment_status or ""
    not_started = _training("False", "NotStarted", "the trainer has not started")
    suspended = _training("False", "Suspended", "the job is suspended")
    if ds == "":  # New: KubeRay has not picked the RayJob up yet
        return AttemptState("Pending", _cluster("False", "Pending", "waiting for KubeRay"), not_started)
    if ds == "Initializing":
        return AttemptState(
            "Initializing", _cluster("False", "Initializing", "creating the Ray cluster"), not_started
        )
    if ds == "Waiting":  # InteractiveMode only; the cluster is up and waits for a submission
        return AttemptState(
            "Initializing", _cluster("True", "ClusterReady", "Ray cluster ready"), not_started
        )
    if ds == "Running":
        ready = _cluster("True", "ClusterReady", "Ray cluster ready")
        if js == "RUNNING":
            return AttemptState("Running", ready, _training("True", "Running", "the trainer is running"))
        if js in JOB_TERMINAL:  # KubeRay is about to mark the deployment Complete or Failed
            return AttemptState("Running", ready, _training("False", "Finishing", f"Ray job {js}"))
        return AttemptState(
            "Initializing", ready, _training("False", "Pending", message or "the Ray job is being submitted")
        )
    if ds == "Complete":
        done = _cluster("False", "JobFinished", "the Ray job finished; the cluster is shut down")
        if js == "SUCCEEDED":
            return AttemptState(
                "Succeeded", done, _training("False", "Succeeded", "training finished"), outcome="succeeded"
            )
        if js == "STOPPED":  # someone stopped the Ray job on purpose: not retried
            why = message or "the Ray job was stopped"
            return AttemptState(
                "Failed", done, _training("False", "Stopped", why), "failed", False, "Stopped", why
            )
        # Older KubeRay reported a failed app as Complete + FAILED; anything else here never ran to the end.
        why_reason = reason or ("AppFailed" if js == "FAILED" else "Incomplete")
        why = message or f"the Ray job ended with status {js or 'unknown'}"
        return AttemptState(
            "Failed", done, _training("False", why_reason, why), "failed", True, why_reason, why
        )
    if ds == "Failed":
        why_reason = reason or "Failed"
        why = message or "the RayJob failed"
        return AttemptState(
            "Failed",
            _cluster("False", why_reason, why),
            _training("False", "Failed", why),
            "failed",
            why_reason not in NOT_RETRIED,
            why_reason,
            why,
        )
    if ds == "ValidationFailed":
        why = message or "KubeRay rejected the RayJob"
        return AttemptState(
            "Failed",
            _cluster("False", "ValidationFailed", why),
            _training("False", "Failed", why),
            "failed",
            False,
            "ValidationFailed",
            why,
        )
    if ds == "Suspending":
        return AttemptState(
            "Suspended", _cluster("False", "Suspending", "deleting the Ray cluster"), suspended
        )
    if ds == "Suspended":
        return AttemptState(
            "Suspended", _cluster("False", "Suspended", "the Ray cluster is deleted"), suspended
        )
    if (
        ds == "Retrying"
    ):  # KubeRay's own retry (the operator sets its backoffLimit to 0; seen only if changed)
        return AttemptState(
            "Retrying",
            _cluster("False", "Retrying", "KubeRay is recreating the Ray cluster"),
            _training("False", "Retrying", "KubeRay is retrying the Ray job"),
        )
    unknown = f"unknown KubeRay state jobDeploymentStatus={ds!r} jobStatus={js!r}"
    return AttemptState(
        None,
        _cluster("Unknown", "UnknownDeploymentStatus", unknown),
        _training("Unknown", "Unknown", unknown),
    )


def rayjob_ref(rayjob: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """The status.rayJob block for the RayJob `name` (which may not exist yet)."""
    status = (rayjob or {}).get("status") or {}
    ref = {
        "name": name,
        "jobStatus": status.get("jobStatus"),
        "deploymentStatus": status.get("jobDeploymentStatus"),
        "rayClusterName": status.get("rayClusterName"),
        "dashboardURL": status.get("dashboardURL"),
        "jobId": status.get("jobId"),
    }
    return {key: value for key, value in ref.items() if value}


def conditions(
    previous: list[dict[str, Any]], desired: list[Cond], now: str, generation: int | None
) -> list[dict[str, Any]]:
    """The condition list: desired conditions in order, lastTransitionTime kept while status holds."""
    before = {cond.get("type"): cond for cond in previous or []}
    out = []
    for cond in desired:
        old = before.get(cond.type) or {}
        changed = old.get("status") != cond.status
        entry = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": now
            if changed or not old.get("lastTransitionTime")
            else old["lastTransitionTime"],
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        out.append(entry)
    return out


def status_patch(previous: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that brings the operator's fields from `previous` to `desired`.

    Only operator-owned fields may appear: the trainer's (progress, metrics, checkpoints,
    latestCheckpoint) are never in it, so a merge patch leaves them as the trainer wrote them.
    """
    unknown = set(desired) - set(OPERATOR_FIELDS)
    if unknown:
        raise ValueError(f"not operator-owned status fields: {sorted(unknown)}")
    patch = {key: value for key, value in desired.items() if previous.get(key) != value}
    # The rayJob block is replaced whole: null out sub-keys KubeRay has cleared (e.g. on suspend).
    if "rayJob" in patch and isinstance(previous.get("rayJob"), dict):
        patch["rayJob"] = {**{key: None for key in previous["rayJob"]}, **desired["rayJob"]}
    return patch


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
