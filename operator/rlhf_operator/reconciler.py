"""Read a job and its RayJobs, ask `decisions.plan_reconcile`, apply the plan.

One reconcile per job at a time (an asyncio lock per job): kopf runs the RLHFJob handlers, the
RayJob watch and the resync loop concurrently, and two reconciles of one job must not race. The
API calls block, so they run in a worker thread.

Order of the writes: children, then the RayJob, then the status. A crash between any two leaves a
state the next reconcile finishes: objects are created only when absent, and the attempt is read
back from the RayJobs that exist, so no RayJob is created twice or lost.

Two things end a job while its plan is applied, once and without a retry: a child whose name is
taken by an object the job does not control (NameConflict; that object is left as it is), and a
child the API server refuses for good (CreateRefused, with the server's message: an invalid
object, an admission policy, a quota). Conflicts, timeouts and server errors propagate and are
retried with kopf's backoff.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.rest import ApiException

from rlhf_trainer.api.status import TERMINAL_PHASES

from . import decisions, naming, startup
from .kube import Kube, NotOwnedError, namespace_terminating, refusal
from .metrics import OperatorMetrics

logger = logging.getLogger(__name__)

# The cluster's own namespaces: the operator never writes there, whatever it is asked to watch.
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")


class Reconciler:
    def __init__(self, kube: Kube, settings: decisions.Settings, metrics: OperatorMetrics):
        self.kube = kube
        self.settings = settings
        self.metrics = metrics
        self.cache = decisions.RenderCache()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._labelled: set[tuple[str, str]] = set()  # (namespace, submitter Job) already labelled

    async def reconcile(self, namespace: str, name: str, handler: str) -> decisions.Plan | None:
        """Reconcile one job; the plan applied (None: nothing to do)."""
        if namespace in SYSTEM_NAMESPACES:
            logger.warning("%s/%s: jobs in system namespaces are not reconciled", namespace, name)
            return None
        lock = self._locks.setdefault((namespace, name), asyncio.Lock())
        async with lock:
            with self.metrics.reconciling(handler):
                return await asyncio.to_thread(self._reconcile, namespace, name)

    def forget(self, namespace: str, name: str) -> None:
        lock = self._locks.get((namespace, name))
        if lock is not None and not lock.locked():
            del self._locks[(namespace, name)]
        self.metrics.forget_job(namespace, name)
        self._labelled = {
            (ns, job) for ns, job in self._labelled if ns != namespace or not job.startswith(name)
        }

    def _reconcile(self, namespace: str, name: str) -> decisions.Plan | None:
        # The RayJobs before the job: the trainer records a checkpoint in the job's status before its
        # RayJob can fail, so a failure seen here comes with that checkpoint in the status read next.
        # In the other order a restart could be planned from a status older than the failure and
        # resume from an earlier checkpoint (or none).
        rayjobs = self.kube.list_rayjobs(namespace, name)
        body = self.kube.get_job(namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None  # deleted: the garbage collector removes the children
        uid = body["metadata"].get("uid")

        def read_recorded() -> dict[str, Any] | None:
            config_map = self.kube.get_owned("v1", "ConfigMap", namespace, naming.config_map_name(name), uid)
            return decisions.recorded_spec(config_map)

        now = datetime.now(UTC)
        previous = body.get("status") or {}
        current, problem = self._observe_startup(body, rayjobs)
        plan = decisions.plan_reconcile(
            body,
            rayjobs,
            self.settings,
            now,
            read_recorded=read_recorded,
            cache=self.cache,
            observed=startup.startup_conditions(previous, problem) if current is not None else (),
        )
        if current is not None and startup.deadline_exceeded(body, current, plan.phase, now):
            plan = startup.deadline_plan(body, current, problem, now)
        elif current is not None:
            plan.events += startup.problem_events(previous, problem)
        try:
            updated, plan = self.apply(body, plan)
        except ApiException as exc:
            if not namespace_terminating(exc):
                raise
            logger.info("%s/%s: namespace is being deleted; nothing to reconcile", namespace, name)
            return None
        self.metrics.observe_job(updated)
        return plan

    def _observe_startup(
        self, body: dict[str, Any], rayjobs: list[dict[str, Any]]
    ) -> tuple[dict[str, Any] | None, startup.Problem | None]:
        """The current attempt's RayJob (None when the job has ended or has none yet) and what
        keeps its pods from starting (see startup.py)."""
        meta, previous = body["metadata"], body.get("status") or {}
        if previous.get("phase") in TERMINAL_PHASES:
            return None, None
        by_attempt = decisions.rayjobs_by_attempt(rayjobs, meta["name"], meta.get("uid"))
        attempt = max([previous.get("attempt") or 0, *by_attempt])
        current = by_attempt.get(attempt)
        if current is None:
            return None, None
        namespace = meta["namespace"]
        pods = self.kube.list_pods(namespace, meta["name"], attempt)
        self._label_submitter_job(namespace, pods)
        events: list[dict[str, Any]] = []
        if previous.get("phase") in (None, *startup.STARTING_PHASES):
            names = {current["metadata"]["name"], (current.get("status") or {}).get("rayClusterName")}
            for involved in sorted(n for n in names if n):
                events += self.kube.list_events(namespace, involved)
        return current, startup.find_problem(pods, events)

    def _label_submitter_job(self, namespace: str, pods: list[dict[str, Any]]) -> None:
        """Give KubeRay's submitter Job the labels of its pod (rlhf.io/job, attempt, role), once:
        `kubectl get jobs -l rlhf.io/job=NAME` then finds it as it finds the job's pods."""
        for pod in pods:
            labels = (pod.get("metadata") or {}).get("labels") or {}
            if labels.get(naming.LABEL_ROLE) != "submitter":
                continue
            for owner in (pod.get("metadata") or {}).get("ownerReferences") or []:
                key = (namespace, owner.get("name") or "")
                if owner.get("kind") != "Job" or key in self._labelled:
                    continue
                wanted = {
                    k: v
                    for k, v in labels.items()
                    if k.startswith("rlhf.io/") or k == naming.LABEL_MANAGED_BY
                }
                try:
                    self.kube.label_batch_job(namespace, key[1], wanted)
                except ApiException as exc:
                    if exc.status != 404:  # gone already (a finished attempt's TTL)
                        logger.warning(
                            "%s/%s: could not label the submitter Job: %s", namespace, key[1], exc.reason
                        )
                    continue
                self._labelled.add(key)

    def apply(self, body: dict[str, Any], plan: decisions.Plan) -> tuple[dict[str, Any], decisions.Plan]:
        """Carry out a plan; returns the job as last written and the plan that was applied (a
        failure plan in place of `plan` when a child met a refusal or a foreign object)."""
        try:
            self._write_children(body, plan)
        except NotOwnedError as exc:
            plan = decisions.fail_job(body, "NameConflict", str(exc), datetime.now(UTC))
        except ApiException as exc:
            message = refusal(exc)
            if message is None:
                raise
            plan = decisions.fail_job(body, "CreateRefused", message, datetime.now(UTC))
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        updated = body
        if plan.status:
            updated = self.kube.patch_job_status(namespace, name, plan.status)
        for event in plan.events:
            try:
                self.kube.post_event(body, event.type, event.reason, event.message)
            except ApiException as exc:  # an event is worth a log line, not a failed reconcile
                if namespace_terminating(exc):
                    logger.info(
                        "%s/%s: namespace is being deleted; event %s dropped", namespace, name, event.reason
                    )
                else:
                    logger.warning(
                        "%s/%s: cannot post event %s: %s", namespace, name, event.reason, exc.reason
                    )
        return updated, plan

    def _write_children(self, body: dict[str, Any], plan: decisions.Plan) -> None:
        meta = body["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid")
        for obj in plan.children:
            self.kube.ensure_child(obj, uid)
        if plan.patch_rayjob is not None:
            self.kube.patch_rayjob(namespace, *plan.patch_rayjob)
        if plan.create_rayjob is not None:
            rayjob_name = plan.create_rayjob["metadata"]["name"]
            if self.kube.ensure_child(plan.create_rayjob, uid):
                logger.info("%s/%s: created RayJob %s", namespace, name, rayjob_name)
                if (naming.attempt_of(rayjob_name, name) or 0) > 0:
                    self.metrics.restarted(namespace, name)
