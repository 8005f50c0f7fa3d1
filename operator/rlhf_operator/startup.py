"""Why a job's pods cannot start, and the pre-running deadline (pure).

KubeRay reports a Ray cluster whose pods cannot be scheduled, pulled, admitted or kept running as
"Initializing", forever. The causes are on the pods (PodScheduled=False/Unschedulable written by
the scheduler; a container waiting in ErrImagePull, ImagePullBackOff, CreateContainerConfigError
or CrashLoopBackOff written by the kubelet) or, when no pod could be created at all, in Warning
events on the RayJob, its RayCluster and KubeRay's submitter Job (FailedCreate /
FailedToCreate*: Pod Security admission, a ResourceQuota, a LimitRange).

`find_problem` turns what was read into one `Problem`; `startup_conditions` makes it the
StartupBlocked condition (True with the cause; False once it clears, like SpecChangeRefused);
`problem_events` posts a Warning event when a cause first appears or changes. `deadline_exceeded`
tells when an attempt has been starting for longer than spec.preRunningDeadlineSeconds, and
`deadline_plan` ends such a job as Failed (reason PreRunningDeadlineExceeded, the cause in the
message) and suspends its RayJob, so KubeRay deletes the pods that hold GPUs or quota.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rlhf_trainer.api.spec import RLHFJobSpec
from rlhf_trainer.api.status import rfc3339

from . import decisions, naming
from . import status as st

STARTUP_BLOCKED = "StartupBlocked"
DEADLINE_REASON = "PreRunningDeadlineExceeded"
DEFAULT_DEADLINE_SECONDS = RLHFJobSpec.model_fields["pre_running_deadline_seconds"].default
# Phases of an attempt that has not started training: the deadline runs, events are read.
STARTING_PHASES = ("Pending", "Initializing", "Retrying")

IMAGE_PULL = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
)
CONTAINER_CONFIG = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")
CRASH_LOOP = ("CrashLoopBackOff",)
_CREATE_FAILED = re.compile(r"^Failed(To)?Create")

HINTS = {
    "Unschedulable": "check the nodes' free nvidia.com/gpu (kubectl describe nodes), their taints "
    "(spec.template.tolerations) and spec.template.nodeSelector; `rlhf render --layout` shows the pods "
    "the job asks for",
    "ImagePullFailed": "check spec.image (or the operator's default image) and spec.template.imagePullSecrets",
    "ContainerConfigError": "a Secret or ConfigMap the pod refers to is missing (spec.secrets, spec.template.env)",
    "CrashLoopBackOff": "see the container's log (kubectl logs --previous)",
    "AdmissionRefused": "the namespace's admission policy (Pod Security, ResourceQuota, LimitRange) "
    "refused the pod",
}


@dataclass(frozen=True)
class Problem:
    reason: str  # the StartupBlocked condition's reason
    message: str  # what and where, e.g. "pod x (worker): 0/3 nodes are available: ..."


# --------------------------------------------------------------------------------------------
# what is wrong


def pod_problem(pod: dict[str, Any]) -> Problem | None:
    """The trouble one pod shows, or None (a pod that is merely starting shows none)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    where = f"pod {meta.get('name')} ({(meta.get('labels') or {}).get(naming.LABEL_ROLE, 'pod')})"
    statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    for container in statuses:
        waiting = (container.get("state") or {}).get("waiting") or {}
        why, detail = waiting.get("reason") or "", waiting.get("message") or ""
        name = container.get("name")
        if why in IMAGE_PULL:
            image = container.get("image") or "its image"
            return Problem(
                "ImagePullFailed", f"{where} container {name}: {why} pulling {image}: {detail}".rstrip(": ")
            )
        if why in CONTAINER_CONFIG:
            return Problem("ContainerConfigError", f"{where} container {name}: {why}: {detail}".rstrip(": "))
        if why in CRASH_LOOP:
            last = (container.get("lastState") or {}).get("terminated") or {}
            ended = (
                f"exit code {last.get('exitCode')} ({last.get('reason') or 'Error'})" if last else "crashed"
            )
            restarts = container.get("restartCount", 0)
            return Problem(
                "CrashLoopBackOff", f"{where} container {name}: {ended}, restarted {restarts} times"
            )
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            return Problem("Unschedulable", f"{where}: {cond.get('message') or 'no node fits the pod'}")
    return None


def event_problem(event: dict[str, Any]) -> Problem | None:
    """A Warning event saying a pod (or the Ray cluster) could not be created."""
    if event.get("type") != "Warning" or not _CREATE_FAILED.match(event.get("reason") or ""):
        return None
    if "already exists" in (event.get("message") or ""):
        return None  # KubeRay creating an object a second time from a stale cache: nothing was refused
    obj = event.get("involvedObject") or {}
    return Problem(
        "AdmissionRefused", f"{obj.get('kind')} {obj.get('name')}: {event.get('message') or ''}".rstrip(": ")
    )


def find_problem(pods: list[dict[str, Any]], events: list[dict[str, Any]]) -> Problem | None:
    """The first cause found (refused creations, then pods in name order), with the count of pods
    that show one."""
    refused = [p for p in (event_problem(e) for e in _newest_first(events)) if p is not None]
    if refused:
        return refused[0]
    found = [p for p in (pod_problem(pod) for pod in sorted(pods, key=_pod_name)) if p is not None]
    if not found:
        return None
    first = found[0]
    more = f" (and {len(found) - 1} more of {len(pods)} pods)" if len(found) > 1 else ""
    return Problem(first.reason, first.message + more)


def _pod_name(pod: dict[str, Any]) -> str:
    return (pod.get("metadata") or {}).get("name") or ""


def _newest_first(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def stamp(event: dict[str, Any]) -> str:
        return event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or ""

    return sorted(events, key=stamp, reverse=True)


# --------------------------------------------------------------------------------------------
# status and events


def startup_conditions(previous: dict[str, Any], problem: Problem | None) -> tuple[st.Cond, ...]:
    """StartupBlocked: True with the cause while there is one, False once it clears (absent when
    there never was one)."""
    if problem is not None:
        hint = HINTS.get(problem.reason)
        return (
            st.Cond(
                STARTUP_BLOCKED,
                "True",
                problem.reason,
                f"{problem.message}; {hint}" if hint else problem.message,
            ),
        )
    if _condition(previous, STARTUP_BLOCKED) is not None:
        return (
            st.Cond(STARTUP_BLOCKED, "False", "NoBlockingCause", "no pod of the job shows a startup problem"),
        )
    return ()


def problem_events(previous: dict[str, Any], problem: Problem | None) -> list[decisions.Event]:
    """A Warning event when a cause appears or changes (not on every reconcile that still sees it)."""
    if problem is None:
        return []
    before = _condition(previous, STARTUP_BLOCKED) or {}
    if before.get("status") == "True" and before.get("reason") == problem.reason:
        return []
    return [decisions.Event("Warning", problem.reason, problem.message)]


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


# --------------------------------------------------------------------------------------------
# the pre-running deadline


def deadline_seconds(body: dict[str, Any]) -> int:
    """spec.preRunningDeadlineSeconds as the job asks now (an in-place field; 0: none)."""
    value = (body.get("spec") or {}).get("preRunningDeadlineSeconds", DEFAULT_DEADLINE_SECONDS)
    return value if isinstance(value, int) and value >= 0 else DEFAULT_DEADLINE_SECONDS


def starting_since(rayjob: dict[str, Any], previous: dict[str, Any]) -> datetime | None:
    """When the current attempt began starting, the latest of: its RayJob's creation, KubeRay's
    status.startTime (set each time the RayJob enters Initializing: after a Kueue admission or a
    resumption too), and the job's resumption (the Suspended condition turning False)."""
    times = [
        (rayjob.get("metadata") or {}).get("creationTimestamp"),
        (rayjob.get("status") or {}).get("startTime"),
    ]
    # Suspended turns False when the job resumes (before any suspension: at its first reconcile).
    resumed = _condition(previous, st.SUSPENDED)
    if resumed is not None and resumed.get("status") == "False":
        times.append(resumed.get("lastTransitionTime"))
    parsed = [_parse_time(t) for t in times if t]
    parsed = [t for t in parsed if t is not None]
    return max(parsed) if parsed else None


def deadline_exceeded(body: dict[str, Any], rayjob: dict[str, Any], phase: str | None, now: datetime) -> bool:
    """The current attempt is still starting after spec.preRunningDeadlineSeconds."""
    seconds = deadline_seconds(body)
    suspended = (body.get("spec") or {}).get("suspend") or (rayjob.get("spec") or {}).get("suspend")
    if seconds == 0 or phase not in STARTING_PHASES or suspended:  # a suspended RayJob: also Kueue's queue
        return False
    since = starting_since(rayjob, body.get("status") or {})
    return since is not None and (now - since).total_seconds() >= seconds


def deadline_plan(
    body: dict[str, Any], rayjob: dict[str, Any], problem: Problem | None, now: datetime
) -> decisions.Plan:
    """Failed for good: the attempt never started; its RayJob is suspended (KubeRay deletes the pods)."""
    previous = body.get("status") or {}
    meta = body.get("metadata") or {}
    rayjob_name = rayjob["metadata"]["name"]
    attempt = naming.attempt_of(rayjob_name, meta.get("name", "")) or 0
    seconds = deadline_seconds(body)
    cause = (
        f"{problem.reason}: {problem.message}"
        if problem is not None
        else "the Ray cluster never became ready"
    )
    message = (
        f"attempt {attempt} did not start training within {seconds}s (spec.preRunningDeadlineSeconds): {cause}. "
        "Its Ray cluster is deleted; fix the cause and re-create the job (or raise the deadline)"
    )
    failed = st.Cond(st.CLUSTER_READY, "False", DEADLINE_REASON, message)
    state = st.AttemptState(
        "Failed",
        failed,
        st.Cond(st.RUNNING, "False", "NotStarted", "the trainer never started"),
        "failed",
        False,
        DEADLINE_REASON,
        message,
    )
    ctx = st.StatusContext(
        previous, rfc3339(now), meta.get("generation"), attempt, extra=startup_conditions(previous, problem)
    )
    desired = st.ended_status(
        ctx,
        "Failed",
        st.rayjob_ref(rayjob, rayjob_name),
        state,
        {"startTime": (rayjob.get("status") or {}).get("startTime")},
    )
    plan = decisions.Plan(patch_rayjob=(rayjob_name, {"spec": {"suspend": True}}))
    return decisions.finish(plan, previous, desired, "Failed", f"{DEADLINE_REASON}: {message}")


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
