"""Read a job and its RayJobs, ask `decisions.plan_reconcile`, apply the plan.

One reconcile per job at a time (an asyncio lock per job): kopf runs the RLHFJob handlers, the
RayJob watch and the resync loop concurrently, and two reconciles of one job must not race. The
API calls block, so they run in a worker thread.

Order of the writes: children, then the RayJob, then the status. A crash between any two leaves a
state the next reconcile finishes: objects are created only when absent, and the attempt is read
back from the RayJobs that exist, so no RayJob is created twice or lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.rest import ApiException

from . import decisions, naming
from .kube import Kube, namespace_terminating
from .metrics import OperatorMetrics

logger = logging.getLogger(__name__)

# Fault injection for the crash tests (e2e/test_operator.py): the operator stops dead at this step
# of applying a plan (config-map, rayjob-created, status-patched) so a test can SIGKILL it there.
PAUSE_ENV = "RLHF_OPERATOR_PAUSE_AT"


class Reconciler:
    def __init__(self, kube: Kube, settings: decisions.Settings, metrics: OperatorMetrics):
        self.kube = kube
        self.settings = settings
        self.metrics = metrics
        self.pause_at = os.environ.get(PAUSE_ENV) or None
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def reconcile(
        self, namespace: str, name: str, handler: str, light: bool = False
    ) -> decisions.Plan | None:
        """Reconcile one job; `light` skips re-ensuring children that exist (RayJob status events)."""
        lock = self._locks.setdefault((namespace, name), asyncio.Lock())
        async with lock:
            with self.metrics.reconciling(handler):
                return await asyncio.to_thread(self._reconcile, namespace, name, light)

    def forget(self, namespace: str, name: str) -> None:
        lock = self._locks.get((namespace, name))
        if lock is not None and not lock.locked():
            del self._locks[(namespace, name)]
        self.metrics.forget_job(namespace, name)

    def _reconcile(self, namespace: str, name: str, light: bool) -> decisions.Plan | None:
        body = self.kube.get_job(namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None  # deleted: the garbage collector removes the children
        rayjobs = self.kube.list_rayjobs(namespace, name)
        plan = decisions.plan_reconcile(body, rayjobs, self.settings, datetime.now(UTC))
        try:
            updated = self.apply(body, plan, light)
        except ApiException as exc:
            if not namespace_terminating(exc):
                raise
            logger.info("%s/%s: namespace is being deleted; nothing to reconcile", namespace, name)
            return None
        self.metrics.observe_job(updated)
        return plan

    def apply(self, body: dict[str, Any], plan: decisions.Plan, light: bool) -> dict[str, Any]:
        """Carry out a plan; returns the job as last written."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if plan.create_rayjob is not None or not light:
            for obj in plan.ensure:
                if plan.config_map is not None and obj["kind"] == "ConfigMap":
                    continue  # written below
                self.kube.create_if_absent(obj)
        if plan.config_map is not None:
            self.kube.write_config_map(plan.config_map)
            self._pause("config-map")
        if plan.patch_rayjob is not None:
            self.kube.patch_rayjob(namespace, *plan.patch_rayjob)
        if plan.create_rayjob is not None:
            rayjob_name = plan.create_rayjob["metadata"]["name"]
            created = self.kube.create_if_absent(plan.create_rayjob)
            attempt = naming.attempt_of(rayjob_name, name) or 0
            if created:
                logger.info("%s/%s: created RayJob %s", namespace, name, rayjob_name)
                if attempt > 0:
                    self.metrics.restarted(namespace, name)
            self._pause("rayjob-created")
        updated = body
        if plan.status:
            updated = self.kube.patch_job_status(namespace, name, plan.status)
            self._pause("status-patched")
        for event in plan.events:
            try:
                self.kube.post_event(body, event.type, event.reason, event.message)
            except ApiException as exc:  # an event is worth a log line, not a failed reconcile
                logger.warning("%s/%s: cannot post event %s: %s", namespace, name, event.reason, exc.reason)
        return updated

    def _pause(self, step: str) -> None:
        if self.pause_at == step:
            logger.warning("PAUSED at %s (%s)", step, PAUSE_ENV)
            while True:
                time.sleep(3600)
