"""What one reconcile of an RLHFJob does (pure): a `Plan` computed from what was read.

Idempotence comes from names: the RayJob of attempt N is `<job>-aN`, the attempt is the larger of
status.attempt and the newest RayJob of this job found, and children are created only when absent
(and changed only when they are this job's, see kube.Kube.ensure_child). An operator killed between
any two steps finds the same plan, or the next one, on its next reconcile.

Children are rendered only when a RayJob is about to be created (first start, restart, a RayJob
deleted by hand) or a suspended job resumes; every other event (RayJob status, resync) only
derives the status. Renders are cached per (job uid, generation, attempt, checkpoint).

Restarts: a failed attempt whose failure is retryable, while attempt < spec.backoffLimit, gets a new
RayJob `<job>-a<N+1>` whose trainer config resumes from status.latestCheckpoint.path (phase
Retrying). A failure the trainer reported as permanent (status.failure of that attempt) is never
retried. The failed RayJob is left for inspection: KubeRay has already deleted its Ray cluster
(shutdownAfterJobFinishes), and it goes with the job through its owner reference.

Spec edits: a RayJob carries the digest of the spec it was rendered from (annotation
rlhf.io/spec-sha256, in-place fields left out); the spec itself is in the trainer ConfigMap, read
back only when the digests differ. Edits of `naming.IN_PLACE` fields apply to the RayJob; any other
edit is refused (condition SpecChangeRefused=True naming the changed fields) and the RayJob is left
as it is. Later attempts keep the recorded spec too.
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import yaml

from rlhf_trainer.api.job import API_VERSION, KIND, RLHFJob
from rlhf_trainer.api.spec import RLHFJobSpec
from rlhf_trainer.api.status import TERMINAL_PHASES, rfc3339
from rlhf_trainer.api.validation import validate_manifest

from . import naming, render
from . import status as st
from .errors import RenderError
from .messages import REASON_LIMIT, clean_message


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    # Written before the RayJob, in order: created when absent, synced when this job owns them.
    children: list[dict[str, Any]] = field(default_factory=list)
    create_rayjob: dict[str, Any] | None = None
    patch_rayjob: tuple[str, dict[str, Any]] | None = None  # (name, merge patch)
    status: dict[str, Any] = field(default_factory=dict)  # merge patch of operator-owned fields
    events: list[Event] = field(default_factory=list)
    failed_permanently: str | None = None  # the job cannot be reconciled; do not retry
    phase: str | None = None

    @property
    def config_map(self) -> dict[str, Any] | None:
        return next((obj for obj in self.children if obj["kind"] == "ConfigMap"), None)


@dataclass(frozen=True)
class Settings:
    default_image: str
    output_dir: str = render.DEFAULT_OUTPUT_DIR
    rayjob_managed_by: str | None = None


class _Lru:
    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def get(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        if key[0] is None or key[1] is None:  # no uid or generation: nothing identifies the spec
            return make()
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = make()
        self._entries[key] = value
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value


class RenderCache:
    """Parsed specs per (uid, generation), needed on every event, and rendered children per (uid,
    generation, attempt, checkpoint), needed when a RayJob is about to be made (the cache spares
    re-rendering while its creation is retried). A spec cannot change without a new generation."""

    def __init__(self, parsed: int = 1024, rendered: int = 64):
        self.parsed = _Lru(parsed)
        self.rendered = _Lru(rendered)


@dataclass(frozen=True)
class Reconcile:
    """One reconcile's view of a job, read once and passed down."""

    name: str
    uid: str | None
    generation: int | None
    settings: Settings
    status: st.StatusContext  # previous status, clock, generation, attempt, extra conditions
    job: RLHFJob  # the job with the spec it runs with (the effective spec)
    current: dict[str, Any] | None  # the RayJob of the current attempt, when it exists
    latest_checkpoint: str | None
    cache: RenderCache | None

    @property
    def attempt(self) -> int:
        return self.status.attempt

    @property
    def previous(self) -> dict[str, Any]:
        return self.status.previous

    def render(self, attempt: int, resume_from: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The children and the RayJob of `attempt`."""

        def make() -> tuple[list[dict[str, Any]], dict[str, Any]]:
            objects = render.render_job_objects(self.job, _options(self.settings, attempt, resume_from))
            children = [obj for obj in objects if obj["kind"] != "RayJob"]
            return children, next(obj for obj in objects if obj["kind"] == "RayJob")

        if self.cache is None:
            return make()
        # The effective spec can differ from the generation's (a refused edit), hence its digest.
        spec = json.dumps(self.job.spec.to_wire(), sort_keys=True)
        key = (self.uid, self.generation, attempt, resume_from, self.settings, spec)
        return self.cache.rendered.get(key, make)


def plan_reconcile(
    body: dict[str, Any],
    rayjobs: list[dict[str, Any]],
    settings: Settings,
    now: datetime,
    read_recorded: Callable[[], dict[str, Any] | None] | None = None,
    cache: RenderCache | None = None,
    observed: tuple[st.Cond, ...] = (),
) -> Plan:
    """One reconcile of the RLHFJob `body`, given the RayJobs labelled with its name.

    `observed`: conditions seen outside the RayJob (StartupBlocked, from the job's pods; see
    startup.py), listed after the operator's own.

    `read_recorded` returns the spec the job's RayJob was rendered from (the trainer ConfigMap's);
    it is called only when the spec's digest differs from the RayJob's.
    """
    metadata = body.get("metadata") or {}
    previous = body.get("status") or {}
    if previous.get("phase") in TERMINAL_PHASES:
        return Plan(phase=previous["phase"])
    name, uid, generation = metadata.get("name", ""), metadata.get("uid"), metadata.get("generation")

    by_attempt = rayjobs_by_attempt(rayjobs, name, uid)
    attempt = max([previous.get("attempt") or 0, *by_attempt])
    current = by_attempt.get(attempt)
    basis = current if current is not None else by_attempt.get(attempt - 1)
    status = st.StatusContext(previous, rfc3339(now), generation, attempt)

    def parse() -> tuple[RLHFJob | None, list[Any], str | None]:
        job, errors = _parse(metadata, body.get("spec"))
        return job, errors, naming.spec_digest(job.spec.to_wire()) if job is not None else None

    job, errors, digest = cache.parsed.get((uid, generation), parse) if cache is not None else parse()
    recorded = None
    if basis is not None and (job is None or _digest(basis) != digest):
        recorded = read_recorded() if read_recorded is not None else None
    invalid_edit: list[str] = []
    if job is None and recorded is not None:
        # The job already runs: an edit the operator cannot read is refused, the job keeps its spec.
        job, _ = _parse(metadata, recorded)
        invalid_edit = [str(e) for e in errors]
    if job is None:
        return fail(status, "InvalidSpec", "; ".join(str(e) for e in errors))
    effective, refused = effective_spec(job.spec, recorded) if not invalid_edit else (job.spec, [])
    extra = st.refusal_conditions(previous, refused, invalid_edit) + observed
    status = dataclasses.replace(status, extra=extra)
    ctx = Reconcile(
        name=name,
        uid=uid,
        generation=generation,
        settings=settings,
        status=status,
        job=job.model_copy(update={"spec": effective}),
        current=current,
        latest_checkpoint=(previous.get("latestCheckpoint") or {}).get("path"),
        cache=cache,
    )
    try:
        return _follow(ctx)
    except RenderError as exc:
        return fail(status, exc.reason, str(exc))


def _follow(ctx: Reconcile) -> Plan:
    spec = ctx.job.spec
    current = ctx.current
    if current is None:
        # First start, a restart whose RayJob was not created yet, or a RayJob deleted by hand.
        children, rayjob = ctx.render(ctx.attempt, ctx.latest_checkpoint)
        plan = Plan(children=children, create_rayjob=rayjob)
        phase = "Retrying" if ctx.attempt > 0 else "Pending"
        ref = st.rayjob_ref(None, rayjob["metadata"]["name"])
        desired = st.live_status(ctx.status, phase, ref, st.attempt_state("", ""), spec.suspend)
        return finish(plan, ctx.previous, desired, phase, f"created RayJob {ref['name']}")

    plan = Plan(patch_rayjob=_in_place_patch(current, spec))
    if _resumes_from_suspend(current, spec):
        # The resumed cluster starts from the latest checkpoint.
        plan.children, _ = ctx.render(ctx.attempt, ctx.latest_checkpoint)
    rs = current.get("status") or {}
    state = st.attempt_state(
        rs.get("jobStatus"), rs.get("jobDeploymentStatus"), rs.get("reason", ""), rs.get("message", "")
    )
    ref = st.rayjob_ref(current, current["metadata"]["name"])
    if state.outcome is not None:
        plan.patch_rayjob = None  # a finished RayJob has nothing left to change

    if state.outcome == "succeeded":
        desired = st.ended_status(ctx.status, "Succeeded", ref, state, rs)
        return finish(plan, ctx.previous, desired, "Succeeded", f"RayJob {ref['name']} succeeded")
    if state.outcome == "failed":
        state = with_trainer_failure(state, ctx.previous.get("failure"), ctx.attempt)
        if backoff_allows(ctx.attempt, spec.backoff_limit, state.retryable):
            return _restart(ctx, state)
        desired = st.ended_status(ctx.status, "Failed", ref, state, rs)
        return finish(plan, ctx.previous, desired, "Failed", f"{state.reason}: {state.message}")

    phase = state.phase or ctx.previous.get("phase") or "Pending"
    if ctx.attempt > 0 and phase in ("Pending", "Initializing"):
        phase = "Retrying"  # until the new attempt runs
    start = None
    if phase == "Running" and not ctx.previous.get("startTime"):
        start = ((rs.get("rayJobInfo") or {}).get("startTime")) or ctx.status.clock
    desired = st.live_status(ctx.status, phase, ref, state, spec.suspend, start_time=start)
    return finish(plan, ctx.previous, desired, phase, state.training.message)


def with_trainer_failure(state: st.AttemptState, failure: Any, attempt: int) -> st.AttemptState:
    """The trainer's report (status.failure) of why `attempt` failed, when it made one: its reason
    and message replace KubeRay's, and a permanent failure is never retried."""
    if not isinstance(failure, dict) or failure.get("attempt") != attempt:
        return state  # none, or the report of an earlier attempt
    reason = clean_message(str(failure.get("reason") or ""), REASON_LIMIT) or state.reason
    message = clean_message(str(failure.get("message") or "")) or state.message
    retryable = state.retryable and failure.get("permanent") is not True
    return dataclasses.replace(state, reason=reason, message=message, retryable=retryable)


def _parse(metadata: dict[str, Any], spec: Any) -> tuple[RLHFJob | None, list[Any]]:
    return validate_manifest({"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec})


def recorded_spec(config_map: dict[str, Any] | None) -> dict[str, Any] | None:
    """The spec a trainer ConfigMap was rendered from (its trainer config's `spec`)."""
    text = ((config_map or {}).get("data") or {}).get(naming.CONFIG_KEY)
    try:
        config = yaml.load(text, Loader=_YAML_LOADER) if text else None
    except yaml.YAMLError:
        return None
    spec = config.get("spec") if isinstance(config, dict) else None
    return spec if isinstance(spec, dict) else None


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def effective_spec(current: RLHFJobSpec, recorded: dict[str, Any] | None) -> tuple[RLHFJobSpec, list[str]]:
    """The spec a job runs with, and the changed field paths that cannot apply in place."""
    if recorded is None:
        return current, []
    wanted = current.to_wire()
    merged = {key: value for key, value in recorded.items() if key not in naming.IN_PLACE}
    merged.update({key: wanted[key] for key in naming.IN_PLACE if key in wanted})
    try:
        effective = RLHFJobSpec.model_validate(merged)
    except ValueError:
        return current, []  # an unreadable record (edited by hand): run what the user asks
    # Against the record read through the model: a field an older operator recorded without (one
    # with a default added since) is not an edit.
    refused = [
        path
        for path in diff_paths(effective.to_wire(), wanted, "spec")
        if path.split(".")[1] not in naming.IN_PLACE
    ]
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


def fail(status: st.StatusContext, reason: str, message: str) -> Plan:
    """The job cannot run and no retry can fix it: Failed, one Warning event, kopf stops retrying."""
    message = clean_message(message)
    desired = st.failed_status(status, reason, message)
    plan = finish(Plan(), status.previous, desired, "Failed", f"{reason}: {message}")
    plan.failed_permanently = f"{reason}: {message}"
    return plan


def fail_job(body: dict[str, Any], reason: str, message: str, now: datetime) -> Plan:
    """`fail` for a job as read (used when applying a plan meets a refusal or a foreign object)."""
    previous = body.get("status") or {}
    meta = body.get("metadata") or {}
    attempt = previous.get("attempt") or 0
    return fail(st.StatusContext(previous, rfc3339(now), meta.get("generation"), attempt), reason, message)


# --------------------------------------------------------------------------------------------


def _restart(ctx: Reconcile, state: st.AttemptState) -> Plan:
    following = ctx.attempt + 1
    children, rayjob = ctx.render(following, ctx.latest_checkpoint)
    name = rayjob["metadata"]["name"]
    where = (
        f"checkpoint {ctx.latest_checkpoint}" if ctx.latest_checkpoint else "the start (no checkpoint yet)"
    )
    message = (
        f"attempt {ctx.attempt} failed ({state.reason}: {state.message}); "
        f"attempt {following} of {ctx.job.spec.backoff_limit} restarts from {where}"
    )
    desired = st.retrying_status(dataclasses.replace(ctx.status, attempt=following), {"name": name}, message)
    plan = Plan(children=children, create_rayjob=rayjob)
    return finish(plan, ctx.previous, desired, "Retrying", desired["message"])


def _options(settings: Settings, attempt: int, resume_from: str | None) -> render.RenderOptions:
    return render.RenderOptions(
        default_image=settings.default_image,
        attempt=attempt,
        resume_from=resume_from,
        output_dir=settings.output_dir,
        rayjob_managed_by=settings.rayjob_managed_by,
    )


def rayjobs_by_attempt(
    rayjobs: list[dict[str, Any]], name: str, uid: str | None
) -> dict[int, dict[str, Any]]:
    """This job's RayJobs by attempt: named for it and controlled by it (a RayJob that only carries
    the label, or belongs to another object of the same name, is not this job's)."""
    found = {}
    for rayjob in rayjobs:
        meta = rayjob.get("metadata") or {}
        owners = [ref.get("uid") for ref in meta.get("ownerReferences") or [] if ref.get("controller")]
        if uid and uid not in owners:
            continue
        attempt = naming.attempt_of(meta.get("name", ""), name)
        if attempt is not None and not meta.get("deletionTimestamp"):
            found[attempt] = rayjob
    return found


def _digest(rayjob: dict[str, Any]) -> str | None:
    return ((rayjob.get("metadata") or {}).get("annotations") or {}).get(naming.ANNOTATION_SPEC_DIGEST)


def _in_place_patch(rayjob: dict[str, Any], effective: RLHFJobSpec) -> tuple[str, dict[str, Any]] | None:
    """Bring the live RayJob's in-place fields to the effective spec."""
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
    return (rayjob["metadata"]["name"], {"spec": spec_patch}) if spec_patch else None


def _resumes_from_suspend(rayjob: dict[str, Any], effective: RLHFJobSpec) -> bool:
    return bool((rayjob.get("spec") or {}).get("suspend")) and not effective.suspend


def finish(plan: Plan, previous: dict[str, Any], desired: dict[str, Any], phase: str, message: str) -> Plan:
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
