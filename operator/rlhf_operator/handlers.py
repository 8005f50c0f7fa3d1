"""The kopf handlers: each reads the event and hands the job to the reconciler.

- RLHFJob create/resume/update(spec): a full reconcile; a job that cannot be reconciled is
  marked Failed by the reconciler and kopf stops retrying it (PermanentError).
- RLHFJob events: mirror the status into the metrics; on deletion, drop the job's series.
- RayJob events (ray.io/v1 rayjobs labelled rlhf.io/job): re-derive the owner's status.
- Pod events (pods labelled rlhf.io/job) of a pod that cannot start: re-derive the owner's status
  (its StartupBlocked condition, see startup.py).
- A resync loop re-derives every job every RLHF_OPERATOR_RESYNC_SECONDS, the safety net for a
  missed event. It is an operator-wide task rather than a kopf timer because kopf puts a finalizer
  on every object that has a timer, and a finalizer would block deleting a job while the operator
  is down; deletion here needs nothing but the garbage collector.

The reconciler, metrics and namespaces come in kopf's `memo` (see main.run_operator).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from typing import Any

import kopf
from kubernetes.client.rest import ApiException

from rlhf_trainer.api.job import GROUP, PLURAL, VERSION
from rlhf_trainer.api.status import TERMINAL_PHASES

from . import naming, startup

RETRY_BACKOFF_SECONDS = 5.0


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own credential readers: the pod's service account, else the kubeconfig."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=RETRY_BACKOFF_SECONDS)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=RETRY_BACKOFF_SECONDS)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", backoff=RETRY_BACKOFF_SECONDS)
async def reconcile_job(namespace: str, name: str, reason: Any, memo: kopf.Memo, **_: Any) -> None:
    plan = await memo.reconciler.reconcile(namespace, name, handler=str(reason))
    if plan is not None and plan.failed_permanently:
        raise kopf.PermanentError(plan.failed_permanently)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def job_event(
    event: dict[str, Any], body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, **_: Any
) -> None:
    if event.get("type") == "DELETED":
        memo.reconciler.forget(namespace, name)
    else:
        memo.metrics.observe_job(body)


@kopf.on.event(
    naming.RAY_GROUP, naming.RAY_VERSION, naming.RAYJOB_PLURAL, labels={naming.LABEL_JOB: kopf.PRESENT}
)
async def rayjob_event(body: kopf.Body, namespace: str, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    job = body.metadata.labels[naming.LABEL_JOB]
    try:
        await memo.reconciler.reconcile(namespace, job, handler="rayjob")
    except ApiException as exc:  # counted in the metrics; the resync loop comes back to it
        logger.warning(f"reconcile of RLHFJob {namespace}/{job} failed: {exc.status} {exc.reason}")


@kopf.on.event("", "v1", "pods", labels={naming.LABEL_JOB: kopf.PRESENT})
async def pod_event(body: kopf.Body, namespace: str, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """A job's pod that cannot start (unschedulable, image pull, crash loop): re-derive the job, so
    its StartupBlocked condition appears within a pod update, not a resync period."""
    if startup.pod_problem(dict(body)) is None:
        return
    job = body.metadata.labels[naming.LABEL_JOB]
    try:
        await memo.reconciler.reconcile(namespace, job, handler="pod")
    except ApiException as exc:
        logger.warning(f"reconcile of RLHFJob {namespace}/{job} failed: {exc.status} {exc.reason}")


@kopf.on.startup()
async def start_resync(memo: kopf.Memo, logger: Any, **_: Any) -> None:
    memo.resync_task = asyncio.create_task(resync_forever(memo, logger))


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("resync_task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def resync_forever(memo: kopf.Memo, logger: Any) -> None:
    while True:
        await asyncio.sleep(memo.resync_seconds)
        try:
            await resync_once(memo)
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any one failure
            logger.warning(f"resync failed: {exc}")


async def resync_once(memo: kopf.Memo) -> None:
    reconciler = memo.reconciler
    patterns = list(memo.namespaces)
    globbing = any(set(pattern) & set("*?[") for pattern in patterns)
    # kopf watches namespace globs itself; here a glob means listing everything and filtering.
    jobs = await asyncio.to_thread(reconciler.kube.list_jobs, [] if globbing else patterns)
    if globbing:
        jobs = [
            job for job in jobs if any(fnmatch.fnmatchcase(job["metadata"]["namespace"], p) for p in patterns)
        ]
    present = set()
    for job in jobs:
        meta = job["metadata"]
        present.add((meta["namespace"], meta["name"]))
        if (job.get("status") or {}).get("phase") in TERMINAL_PHASES:
            memo.metrics.observe_job(job)
            continue
        with contextlib.suppress(ApiException):
            await reconciler.reconcile(meta["namespace"], meta["name"], handler="resync")
    for namespace, name in memo.metrics.known_jobs() - present:
        reconciler.forget(namespace, name)  # deleted while a DELETED event was missed
