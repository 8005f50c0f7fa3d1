"""kopf handlers of RLHFPipelines: each reads the pipeline and its child RLHFJobs, asks
`pipeline.decide`, creates the next stage's RLHFJob and writes the pipeline's status.

Triggers: the pipeline's create/resume/spec update, every event of an RLHFJob labelled
rlhf.io/pipeline (a stage's phase or exported model changed), and a resync of every unfinished
pipeline each RLHF_OPERATOR_RESYNC_SECONDS (the safety net for a missed event; a task rather than
a kopf timer, which would put a finalizer on every pipeline). Registered by importing this module
(main.run_operator).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from typing import Any

import kopf
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from rlhf_trainer.api.job import GROUP, PLURAL, VERSION
from rlhf_trainer.api.pipeline import LABEL_PIPELINE, PIPELINE_PLURAL

from .kube import MERGE_PATCH, load_api_client
from .pipeline import decide, status_patch

_API: dict[str, k8s_client.CustomObjectsApi] = {}


def _custom() -> k8s_client.CustomObjectsApi:
    if "custom" not in _API:
        _API["custom"] = k8s_client.CustomObjectsApi(load_api_client())
    return _API["custom"]


def reconcile_pipeline_sync(namespace: str, name: str) -> None:
    api = _custom()
    try:
        pipeline = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PIPELINE_PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return
        raise
    listed = api.list_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, label_selector=f"{LABEL_PIPELINE}={name}"
    )
    uid = pipeline["metadata"]["uid"]
    children = {
        item["metadata"]["name"]: item
        for item in listed.get("items", [])
        if any(ref.get("uid") == uid for ref in item["metadata"].get("ownerReferences") or [])
    }
    plan = decide(pipeline, children)
    status = plan.status
    for child in plan.create:
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, child)
        except ApiException as exc:
            if exc.status != 409:
                raise
            # Ours from a pass whose list missed it is fine; someone else's is never adopted.
            existing = api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, child["metadata"]["name"]
            )
            refs = existing["metadata"].get("ownerReferences") or []
            if not any(ref.get("uid") == uid for ref in refs):
                status = {
                    **status,
                    "phase": "Failed",
                    "message": f"RLHFJob {child['metadata']['name']} exists and does not belong to this "
                    "pipeline: rename the pipeline or the stage, or delete that RLHFJob",
                }
    patch = status_patch(pipeline.get("status") or {}, status)
    if patch is not None:
        api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PIPELINE_PLURAL, name, {"status": patch}, _content_type=MERGE_PATCH
        )


@kopf.on.resume(GROUP, VERSION, PIPELINE_PLURAL, backoff=5.0)
@kopf.on.create(GROUP, VERSION, PIPELINE_PLURAL, backoff=5.0)
@kopf.on.update(GROUP, VERSION, PIPELINE_PLURAL, field="spec", backoff=5.0)
async def reconcile_pipeline(namespace: str, name: str, **_: Any) -> None:
    await asyncio.to_thread(reconcile_pipeline_sync, namespace, name)


@kopf.on.event(GROUP, VERSION, PLURAL, labels={LABEL_PIPELINE: kopf.PRESENT})
async def stage_job_event(body: kopf.Body, namespace: str, logger: Any, **_: Any) -> None:
    pipeline = body.metadata.labels[LABEL_PIPELINE]
    try:
        await asyncio.to_thread(reconcile_pipeline_sync, namespace, pipeline)
    except ApiException as exc:
        logger.warning(f"reconcile of RLHFPipeline {namespace}/{pipeline} failed: {exc.status} {exc.reason}")


def unfinished_pipelines(patterns: list[str]) -> list[tuple[str, str]]:
    """(namespace, name) of every pipeline not Succeeded or Failed in the watched namespaces."""
    api = _custom()
    globbing = not patterns or any(set(p) & set("*?[") for p in patterns)
    if globbing:
        items = api.list_cluster_custom_object(GROUP, VERSION, PIPELINE_PLURAL)["items"]
        if patterns:
            items = [
                i for i in items if any(fnmatch.fnmatchcase(i["metadata"]["namespace"], p) for p in patterns)
            ]
    else:
        items = [
            item
            for namespace in patterns
            for item in api.list_namespaced_custom_object(GROUP, VERSION, namespace, PIPELINE_PLURAL)["items"]
        ]
    return [
        (i["metadata"]["namespace"], i["metadata"]["name"])
        for i in items
        if (i.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]


async def resync_pipelines_forever(memo: kopf.Memo, logger: Any) -> None:
    while True:
        await asyncio.sleep(memo.resync_seconds)
        try:
            for namespace, name in await asyncio.to_thread(unfinished_pipelines, list(memo.namespaces)):
                with contextlib.suppress(ApiException):
                    await asyncio.to_thread(reconcile_pipeline_sync, namespace, name)
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any one failure
            logger.warning(f"pipeline resync failed: {exc}")


@kopf.on.startup()
async def start_pipeline_resync(memo: kopf.Memo, logger: Any, **_: Any) -> None:
    memo.pipeline_resync_task = asyncio.create_task(resync_pipelines_forever(memo, logger))


@kopf.on.cleanup()
async def stop_pipeline_resync(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("pipeline_resync_task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
