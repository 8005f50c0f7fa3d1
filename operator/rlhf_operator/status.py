"""RayJob status -> RLHFJob phase, conditions and the status document (pure).

KubeRay reports two levels: `jobDeploymentStatus` (the RayCluster's lifecycle: New, Initializing,
Running, Complete, Failed, ValidationFailed, Suspending, Suspended, Retrying, Waiting) and
`jobStatus` (the Ray job's own state: "", PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED). They stay
apart here too: the `RayClusterReady` condition reports the infrastructure, `Running` reports
training, and `Succeeded`/`Failed` appear when the job ends. `attempt_state` is the table.

The status documents (`live_status`, `ended_status`, `failed_status`) are built from the
`api/status.py` models, so what the operator writes is what the CRD declares. Every message is
bounded and scrubbed of anything that looks like a credential (`messages.clean_message`): KubeRay
copies the driver's log into the RayJob's message, and a log can hold tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhf_trainer.api.status import OPERATOR_FIELDS, RLHFJobStatus

from .messages import REASON_LIMIT, clean_message
from .naming import IN_PLACE

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
    reason, message = clean_message(reason, REASON_LIMIT), clean_message(message)
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
            "message": clean_message(cond.message),
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


# --------------------------------------------------------------------------------------------
# the status document


@dataclass(frozen=True)
class StatusContext:
    """What every status document of one reconcile shares."""

    previous: dict[str, Any]  # the status as read (operator's and trainer's fields)
    clock: str  # now, RFC 3339
    generation: int | None
    attempt: int
    extra: tuple[Cond, ...] = ()  # SpecChangeRefused, when it applies


def live_status(
    ctx: StatusContext,
    phase: str,
    ref: dict[str, Any],
    state: AttemptState,
    suspend_requested: bool,
    start_time: str | None = None,
) -> dict[str, Any]:
    """A job whose current attempt has not ended (or has not been created yet)."""
    conds = _base_conditions(state, phase, suspend_requested)
    message = state.training.message or state.cluster.message
    if phase == "Retrying" and ctx.previous.get("phase") == "Retrying":
        message = ctx.previous.get("message") or message  # why it restarts, until the new attempt runs
    return _document(
        ctx,
        phase=phase,
        attempt=ctx.attempt,
        ray_job=ref,
        conds=conds,
        message=message,
        start_time=start_time,
    )


def retrying_status(ctx: StatusContext, ref: dict[str, Any], message: str) -> dict[str, Any]:
    """A new attempt was just decided; `ctx.attempt` is the new one."""
    message = clean_message(message)
    state = AttemptState(
        "Retrying", _cluster("False", "Retrying", message), _training("False", "Retrying", message)
    )
    conds = _base_conditions(state, "Retrying", False)
    return _document(ctx, phase="Retrying", attempt=ctx.attempt, ray_job=ref, conds=conds, message=message)


def ended_status(
    ctx: StatusContext, phase: str, ref: dict[str, Any], state: AttemptState, rayjob_status: dict[str, Any]
) -> dict[str, Any]:
    """The current attempt ended and no other follows: Succeeded or Failed."""
    if phase == "Succeeded":
        outcome = Cond(SUCCEEDED, "True", "Succeeded", state.training.message)
        message = f"training finished (attempt {ctx.attempt})"
    else:
        outcome = Cond(FAILED, "True", state.reason, state.message)
        message = f"{state.reason}: {state.message}"
    conds = [*_base_conditions(state, phase, False), outcome]
    return _document(
        ctx,
        phase=phase,
        attempt=ctx.attempt,
        ray_job=ref,
        conds=conds,
        message=message,
        completion_time=rayjob_status.get("endTime") or ctx.clock,
        start_time=None if ctx.previous.get("startTime") else rayjob_status.get("startTime") or ctx.clock,
    )


def failed_status(ctx: StatusContext, reason: str, message: str) -> dict[str, Any]:
    """The job cannot run (an invalid spec, a render error, a child the server refused or that
    belongs to someone else): Failed, with no RayJob created for it."""
    message = clean_message(message)
    conds = [
        Cond(CLUSTER_READY, "False", reason, "no RayJob was created"),
        Cond(RUNNING, "False", reason, message),
        Cond(FAILED, "True", reason, message),
    ]
    return _document(
        ctx,
        phase="Failed",
        conds=conds,
        message=f"{reason}: {message}",
        completion_time=ctx.clock,
        extra=False,
    )


def refusal_conditions(previous: dict[str, Any], refused: list[str], invalid: list[str]) -> tuple[Cond, ...]:
    """SpecChangeRefused: True while the spec asks for a change the running job cannot take."""
    if invalid:
        message = (
            f"the edited spec is invalid ({'; '.join(invalid)}); the job keeps running with its previous spec"
        )
        return (Cond(SPEC_CHANGE_REFUSED, "True", "InvalidSpec", message),)
    if refused:
        message = (
            f"{', '.join(refused)}: cannot change while the job has a RayJob; the job keeps running "
            f"with its previous spec. Only these fields apply in place: {', '.join(IN_PLACE)}. "
            "Revert the change, or delete the "
            "job and apply it again (with checkpoint.resume: auto the new job continues from the latest "
            "checkpoint on the checkpoint volume); see docs/editing.md."
        )
        return (Cond(SPEC_CHANGE_REFUSED, "True", "NotInPlace", message),)
    if any(cond.get("type") == SPEC_CHANGE_REFUSED for cond in previous.get("conditions") or []):
        return (Cond(SPEC_CHANGE_REFUSED, "False", "SpecMatches", "the spec matches the running job"),)
    return ()


def _base_conditions(state: AttemptState, phase: str, suspend_requested: bool) -> list[Cond]:
    if phase == "Suspended":
        suspend = Cond(SUSPENDED, "True", state.cluster.reason, "the job is suspended")
    elif suspend_requested:
        suspend = Cond(SUSPENDED, "False", "Suspending", "spec.suspend is true; waiting for KubeRay")
    else:
        suspend = Cond(SUSPENDED, "False", "NotSuspended", "")
    return [state.cluster, state.training, suspend]


# RLHFJobStatus attribute names of the operator-owned fields.
_OPERATOR_ATTRS = {
    name for name, field in RLHFJobStatus.model_fields.items() if field.alias in OPERATOR_FIELDS
}


def _document(
    ctx: StatusContext, *, conds: list[Cond], message: str, extra: bool = True, **fields: Any
) -> dict[str, Any]:
    """The operator's fields (RLHFJobStatus attribute names in `fields`; None: left out) on the wire."""
    listed = [*conds, *ctx.extra] if extra else conds
    status = RLHFJobStatus.model_validate(
        {
            **{name: value for name, value in fields.items() if value is not None},
            "observed_generation": ctx.generation,
            "conditions": conditions(ctx.previous.get("conditions") or [], listed, ctx.clock, ctx.generation),
            "message": clean_message(message),
        }
    )
    return status.model_dump(mode="json", by_alias=True, exclude_none=True, include=_OPERATOR_ATTRS)
