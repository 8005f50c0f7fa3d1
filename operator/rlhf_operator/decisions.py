"""What one reconcile of an RLHFJob does (pure): a `Plan` computed from what was read.

Idempotence comes from names: the RayJob of attempt N is `<job>-aN`, the attempt is the larger of
status.attempt and the newest RayJob found, and children are created only when absent. An operator
killed between any two steps finds the same plan, or the next one, on its next reconcile.

Restarts: a failed attempt whose failure is retryable, while attempt < spec.backoffLimit, gets a new
RayJob `<job>-a<N+1>` whose trainer config resumes from status.latestCheckpoint.path (phase
Retrying). The failed RayJob is left for inspection: KubeRay has already deleted its Ray cluster
(shutdownAfterJobFinishes), and it goes with the job through its owner reference.

Spec edits: a RayJob records the spec it was rendered from (annotation rlhf.io/spec). Edits of
`IN_PLACE` fields apply to it; any other edit is refused (condition SpecChangeRefused=True naming the
changed fields) and the RayJob is left as it is. Later attempts keep the recorded spec too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rlhf_trainer.api.job import API_VERSION, KIND, RLHFJob
from rlhf_trainer.api.spec import RLHFJobSpec
from rlhf_trainer.api.status import TERMINAL_PHASES
from rlhf_trainer.api.validation import validate_manifest

from . import naming, render
from . import status as st
from .errors import RenderError

# Spec fields (wire names) that apply to a live RayJob; backoffLimit is the operator's own.
IN_PLACE = ("suspend", "activeDeadlineSeconds", "ttlSecondsAfterFinished", "backoffLimit")
RAYJOB_FIELDS = ("suspend", "activeDeadlineSeconds", "ttlSecondsAfterFinished")


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    ensure: list[dict[str, Any]] = field(default_factory=list)  # create when absent
    config_map: dict[str, Any] | None = None  # write (create or replace) before the RayJob steps
    create_rayjob: dict[str, Any] | None = None
    patch_rayjob: tuple[str, dict[str, Any]] | None = None  # (name, merge patch)
    status: dict[str, Any] = field(default_factory=dict)  # merge patch of operator-owned fields
    events: list[Event] = field(default_factory=list)
    failed_permanently: str | None = None  # the job cannot be reconciled; do not retry
    phase: str | None = None


@dataclass(frozen=True)
class Settings:
    default_image: str
    output_dir: str = render.DEFAULT_OUTPUT_DIR
    rayjob_managed_by: str | None = None


def plan_reconcile(
    body: dict[str, Any], rayjobs: list[dict[str, Any]], settings: Settings, now: datetime
) -> Plan:
    """One reconcile of the RLHFJob `body`, given the RayJobs labelled with its name."""
    metadata = body.get("metadata") or {}
    previous = body.get("status") or {}
    name = metadata.get("name", "")
    if previous.get("phase") in TERMINAL_PHASES:
        return Plan(phase=previous["phase"])
    clock = st.rfc3339(now)
    generation = metadata.get("generation")

    by_attempt = _rayjobs_by_attempt(rayjobs, name, metadata.get("uid"))
    attempt = max([previous.get("attempt") or 0, *by_attempt])
    current = by_attempt.get(attempt)
    recorded = _recorded_spec(current if current is not None else by_attempt.get(attempt - 1))

    job, errors = _parse(metadata, body.get("spec"))
    invalid_edit: list[str] = []
    if job is None and recorded is not None:
        # The job already runs: an edit the operator cannot read is refused, the job keeps its spec.
        job, _ = _parse(metadata, recorded)
        invalid_edit = [str(e) for e in errors]
    if job is None:
        return _fail_permanently(
            previous, "InvalidSpec", "; ".join(str(e) for e in errors), clock, generation
        )
    effective, refused = effective_spec(job.spec, recorded) if not invalid_edit else (job.spec, [])
    run_job = job.model_copy(update={"spec": effective})
    latest = (previous.get("latestCheckpoint") or {}).get("path")

    try:
        options = _options(settings, attempt, latest)
        objects = render.render_job_objects(run_job, options)
    except RenderError as exc:
        return _fail_permanently(previous, exc.reason, str(exc), clock, generation)
    config_map, *rbac, rayjob = objects
    plan = Plan(ensure=[*rbac, config_map])
    extra = _refusal_conditions(previous, refused, invalid_edit)

    if current is None:
        # First start, a restart whose RayJob was not created yet, or a RayJob deleted by hand.
        plan.config_map = config_map
        plan.create_rayjob = rayjob
        phase = "Retrying" if attempt > 0 else "Pending"
        state = st.attempt_state("", "")
        ref = st.rayjob_ref(None, rayjob["metadata"]["name"])
        desired = _live_status(previous, phase, attempt, ref, state, effective, extra, clock, generation)
        return _finish(plan, previous, desired, phase, f"created RayJob {ref['name']}")

    plan.patch_rayjob = _in_place_patch(current, effective)
    if _resumes_from_suspend(current, effective):
        plan.config_map = config_map  # the resumed cluster starts from the latest checkpoint
    rs = current.get("status") or {}
    state = st.attempt_state(
        rs.get("jobStatus"), rs.get("jobDeploymentStatus"), rs.get("reason", ""), rs.get("message", "")
    )
    ref = st.rayjob_ref(current, current["metadata"]["name"])
    if state.outcome is not None:
        plan.patch_rayjob = None  # a finished RayJob has nothing left to change

    if state.outcome == "succeeded":
        desired = _ended_status(previous, "Succeeded", attempt, ref, state, rs, extra, clock, generation)
        return _finish(plan, previous, desired, "Succeeded", f"RayJob {ref['name']} succeeded")
    if state.outcome == "failed":
        if backoff_allows(attempt, effective.backoff_limit, state.retryable):
            return _restart(
                plan, previous, run_job, settings, attempt, state, latest, extra, clock, generation
            )
        desired = _ended_status(previous, "Failed", attempt, ref, state, rs, extra, clock, generation)
        return _finish(plan, previous, desired, "Failed", f"{state.reason}: {state.message}")

    phase = state.phase or previous.get("phase") or "Pending"
    if attempt > 0 and phase in ("Pending", "Initializing"):
        phase = "Retrying"  # until the new attempt runs
    desired = _live_status(previous, phase, attempt, ref, state, effective, extra, clock, generation)
    if phase == "Running" and not previous.get("startTime"):
        desired["startTime"] = ((rs.get("rayJobInfo") or {}).get("startTime")) or clock
    return _finish(plan, previous, desired, phase, state.training.message)


def _parse(metadata: dict[str, Any], spec: Any) -> tuple[RLHFJob | None, list[Any]]:
    return validate_manifest({"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec})


def effective_spec(current: RLHFJobSpec, recorded: dict[str, Any] | None) -> tuple[RLHFJobSpec, list[str]]:
    """The spec a job runs with, and the changed field paths that cannot apply in place."""
    if recorded is None:
        return current, []
    wanted = current.to_wire()
    merged = {key: value for key, value in recorded.items() if key not in IN_PLACE}
    merged.update({key: wanted[key] for key in IN_PLACE if key in wanted})
    try:
        effective = RLHFJobSpec.model_validate(merged)
    except ValueError:
        return current, []  # an unreadable record (edited by hand): run what the user asks
    refused = [path for path in diff_paths(recorded, wanted, "spec") if path.split(".")[1] not in IN_PLACE]
    return effective, refused


def diff_paths(old: Any, new: Any, prefix: str) -> list[str]:
    """Field paths where two wire documents differ (lists compare whole)."""
    if isinstance(old, dict) and isinstance(new, dict):
        paths = []
        for key in sorted(set(old) | set(new)):
            paths += diff_paths(old.get(key), new.get(key), f"{prefix}.{key}")
        return paths
    return [] if old == new else [prefix]


def backoff_allows(attempt: int, backoff_limit: int, retryable: bool) -> bool:
    """Attempt N (0 first) may be followed by N+1 while N < backoffLimit."""
    return retryable and attempt < backoff_limit


# --------------------------------------------------------------------------------------------


def _restart(
    plan: Plan,
    previous: dict[str, Any],
    run_job: RLHFJob,
    settings: Settings,
    attempt: int,
    state: st.AttemptState,
    latest: str | None,
    extra: list[st.Cond],
    clock: str,
    generation: int | None,
) -> Plan:
    following = attempt + 1
    config_map, *_, rayjob = render.render_job_objects(run_job, _options(settings, following, latest))
    plan.config_map = config_map
    plan.create_rayjob = rayjob
    plan.patch_rayjob = None
    name = rayjob["metadata"]["name"]
    where = f"checkpoint {latest}" if latest else "the start (no checkpoint yet)"
    message = (
        f"attempt {attempt} failed ({state.reason}: {state.message}); "
        f"attempt {following} of {run_job.spec.backoff_limit} restarts from {where}"
    )
    retrying = st.AttemptState(
        "Retrying",
        st.Cond(st.CLUSTER_READY, "False", "Retrying", message),
        st.Cond(st.RUNNING, "False", "Retrying", message),
    )
    desired = _live_status(
        previous, "Retrying", following, {"name": name}, retrying, run_job.spec, extra, clock, generation
    )
    desired["message"] = message
    return _finish(plan, previous, desired, "Retrying", message)


def _options(settings: Settings, attempt: int, resume_from: str | None) -> render.RenderOptions:
    return render.RenderOptions(
        default_image=settings.default_image,
        attempt=attempt,
        resume_from=resume_from,
        output_dir=settings.output_dir,
        rayjob_managed_by=settings.rayjob_managed_by,
    )


def _rayjobs_by_attempt(
    rayjobs: list[dict[str, Any]], name: str, uid: str | None
) -> dict[int, dict[str, Any]]:
    """This job's RayJobs by attempt; RayJobs owned by another object of the same name are ignored."""
    found = {}
    for rayjob in rayjobs:
        meta = rayjob.get("metadata") or {}
        owners = [ref.get("uid") for ref in meta.get("ownerReferences") or [] if ref.get("controller")]
        if uid and owners and uid not in owners:
            continue
        attempt = naming.attempt_of(meta.get("name", ""), name)
        if attempt is not None and not meta.get("deletionTimestamp"):
            found[attempt] = rayjob
    return found


def _recorded_spec(rayjob: dict[str, Any] | None) -> dict[str, Any] | None:
    if rayjob is None:
        return None
    text = ((rayjob.get("metadata") or {}).get("annotations") or {}).get(naming.ANNOTATION_SPEC)
    try:
        recorded = json.loads(text) if text else None
    except ValueError:
        return None
    return recorded if isinstance(recorded, dict) else None


def _in_place_patch(rayjob: dict[str, Any], effective: RLHFJobSpec) -> tuple[str, dict[str, Any]] | None:
    """Bring the live RayJob's in-place fields (and its spec record) to the effective spec."""
    live = rayjob.get("spec") or {}
    wanted = {
        "suspend": effective.suspend,
        "activeDeadlineSeconds": effective.active_deadline_seconds,
        "ttlSecondsAfterFinished": effective.ttl_seconds_after_finished,
    }
    defaults = {"suspend": False, "ttlSecondsAfterFinished": 0}
    spec_patch = {
        key: value
        for key, value in wanted.items()
        if live.get(key, defaults.get(key)) != (defaults.get(key) if value is None else value)
    }
    record = render.spec_annotation(effective)
    annotations = (rayjob.get("metadata") or {}).get("annotations") or {}
    if not spec_patch and annotations.get(naming.ANNOTATION_SPEC) == record:
        return None
    patch: dict[str, Any] = {"metadata": {"annotations": {naming.ANNOTATION_SPEC: record}}}
    if spec_patch:
        patch["spec"] = spec_patch
    return rayjob["metadata"]["name"], patch


def _resumes_from_suspend(rayjob: dict[str, Any], effective: RLHFJobSpec) -> bool:
    return bool((rayjob.get("spec") or {}).get("suspend")) and not effective.suspend


def _refusal_conditions(previous: dict[str, Any], refused: list[str], invalid: list[str]) -> list[st.Cond]:
    if invalid:
        message = (
            f"the edited spec is invalid ({'; '.join(invalid)}); the job keeps running with its previous spec"
        )
        return [st.Cond(st.SPEC_CHANGE_REFUSED, "True", "InvalidSpec", message)]
    if refused:
        message = (
            f"{', '.join(refused)}: cannot change while the job has a RayJob; the job keeps running "
            "with its previous spec. Revert the change, or delete and recreate the job."
        )
        return [st.Cond(st.SPEC_CHANGE_REFUSED, "True", "NotInPlace", message)]
    if any(cond.get("type") == st.SPEC_CHANGE_REFUSED for cond in previous.get("conditions") or []):
        return [st.Cond(st.SPEC_CHANGE_REFUSED, "False", "SpecMatches", "the spec matches the running job")]
    return []


def _base_conditions(state: st.AttemptState, spec: RLHFJobSpec | None, phase: str) -> list[st.Cond]:
    suspended = phase == "Suspended"
    if suspended:
        suspend = st.Cond(st.SUSPENDED, "True", state.cluster.reason, "the job is suspended")
    elif spec is not None and spec.suspend:
        suspend = st.Cond(st.SUSPENDED, "False", "Suspending", "spec.suspend is true; waiting for KubeRay")
    else:
        suspend = st.Cond(st.SUSPENDED, "False", "NotSuspended", "")
    return [state.cluster, state.training, suspend]


def _live_status(
    previous: dict[str, Any],
    phase: str,
    attempt: int,
    ref: dict[str, Any],
    state: st.AttemptState,
    spec: RLHFJobSpec,
    extra: list[st.Cond],
    clock: str,
    generation: int | None,
) -> dict[str, Any]:
    conds = _base_conditions(state, spec, phase) + extra
    message = state.training.message or state.cluster.message
    if phase == "Retrying" and previous.get("phase") == "Retrying":
        message = previous.get("message") or message  # why it restarts, until the new attempt runs
    return {
        "phase": phase,
        "attempt": attempt,
        "rayJob": ref,
        "observedGeneration": generation,
        "conditions": st.conditions(previous.get("conditions") or [], conds, clock, generation),
        "message": message,
    }


def _ended_status(
    previous: dict[str, Any],
    phase: str,
    attempt: int,
    ref: dict[str, Any],
    state: st.AttemptState,
    rayjob_status: dict[str, Any],
    extra: list[st.Cond],
    clock: str,
    generation: int | None,
) -> dict[str, Any]:
    if phase == "Succeeded":
        outcome = st.Cond(st.SUCCEEDED, "True", "Succeeded", state.training.message)
        message = f"training finished (attempt {attempt})"
    else:
        outcome = st.Cond(st.FAILED, "True", state.reason, state.message)
        message = f"{state.reason}: {state.message}"
    conds = _base_conditions(state, None, phase) + [outcome] + extra
    desired = {
        "phase": phase,
        "attempt": attempt,
        "rayJob": ref,
        "observedGeneration": generation,
        "conditions": st.conditions(previous.get("conditions") or [], conds, clock, generation),
        "message": message,
        "completionTime": rayjob_status.get("endTime") or clock,
    }
    if not previous.get("startTime"):
        desired["startTime"] = rayjob_status.get("startTime") or clock
    return desired


def _fail_permanently(
    previous: dict[str, Any], reason: str, message: str, clock: str, generation: int | None
) -> Plan:
    conds = [
        st.Cond(st.CLUSTER_READY, "False", reason, "no RayJob was created"),
        st.Cond(st.RUNNING, "False", reason, message),
        st.Cond(st.FAILED, "True", reason, message),
    ]
    desired = {
        "phase": "Failed",
        "observedGeneration": generation,
        "conditions": st.conditions(previous.get("conditions") or [], conds, clock, generation),
        "message": f"{reason}: {message}",
        "completionTime": clock,
    }
    plan = _finish(Plan(), previous, desired, "Failed", f"{reason}: {message}")
    plan.failed_permanently = f"{reason}: {message}"
    return plan


def _finish(plan: Plan, previous: dict[str, Any], desired: dict[str, Any], phase: str, message: str) -> Plan:
    desired = {key: value for key, value in desired.items() if value is not None}
    plan.status = st.status_patch(previous, desired)
    plan.phase = phase
    if previous.get("phase") != phase:
        kind = "Warning" if phase in ("Failed", "Retrying") else "Normal"
        plan.events.append(Event(kind, phase, message or phase))
    refused = _true_condition(desired.get("conditions") or [], st.SPEC_CHANGE_REFUSED)
    if refused and not _true_condition(previous.get("conditions") or [], st.SPEC_CHANGE_REFUSED):
        plan.events.append(Event("Warning", st.SPEC_CHANGE_REFUSED, refused["message"]))
    return plan


def _true_condition(conditions: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == kind and c.get("status") == "True"), None)
