"""A job whose pods cannot start: the StartupBlocked condition, then Failed at the pre-running deadline.

Reusable on any cluster the operator serves: `run_startup_scenario(api_client, namespace, job,
cause)` needs a kubernetes ApiClient (admin or enough to read/write RLHFJobs, RayJobs and pods),
an RLHFJob already submitted with a short spec.preRunningDeadlineSeconds, and which cause the
pods meet. On the e2e control plane there is no scheduler or kubelet, so `play_node=True` makes
the head pod KubeRay would make (from the RayJob's head template, with its labels) and writes
the pod status the scheduler ("unschedulable") or the kubelet ("image-pull") would write, through
the status subresource. On a real node pass `play_node=False`: the real scheduler/kubelet write
it (a job asking for more nvidia.com/gpu than any node has, or an image that does not exist).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from e2e_kube import eventually
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

UNSCHEDULABLE_MESSAGE = (
    "0/3 nodes are available: 1 Insufficient nvidia.com/gpu, 2 node(s) had untolerated taint "
    "{nvidia.com/gpu: present}. preemption: 0/3 nodes are available."
)
# cause -> the StartupBlocked reason the operator must report
EXPECTED_REASON = {
    "unschedulable": "Unschedulable",
    "image-pull": "ImagePullFailed",
    "admission": "AdmissionRefused",
}
QUOTA_MESSAGE = (
    'Failed to create head Pod {pod}, pods "{pod}" is forbidden: exceeded quota: gpu-quota, '
    "requested: requests.nvidia.com/gpu=8, used: requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=4"
)


def _condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (job.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)


def pod_status(cause: str, image: str) -> dict[str, Any]:
    """The status a scheduler (unschedulable) or a kubelet (image-pull) writes for the cause."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if cause == "unschedulable":
        return {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": UNSCHEDULABLE_MESSAGE,
                    "lastTransitionTime": now,
                }
            ],
        }
    if cause == "image-pull":
        return {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now}],
            "containerStatuses": [
                {
                    "name": "ray-head",
                    "image": image,
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "waiting": {
                            "reason": "ImagePullBackOff",
                            "message": f'Back-off pulling image "{image}"',
                        }
                    },
                }
            ],
        }
    raise ValueError(f"unknown cause {cause!r}")


def make_head_pod(core: k8s_client.CoreV1Api, rayjob: dict[str, Any], cause: str) -> str:
    """What KubeRay (the pod) and the scheduler or kubelet (its status) would write; the pod's name."""
    template = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    meta = rayjob["metadata"]
    name = f"{meta['name']}-head-e2e"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }
    core.create_namespaced_pod(meta["namespace"], pod)
    image = template["spec"]["containers"][0]["image"]
    core.patch_namespaced_pod_status(name, meta["namespace"], {"status": pod_status(cause, image)})
    return name


def post_refusal_event(core: k8s_client.CoreV1Api, rayjob: dict[str, Any], cluster: str) -> str:
    """The Warning event KubeRay posts on a RayCluster whose head pod the API server refused (here
    a ResourceQuota); the pod's name."""
    meta = rayjob["metadata"]
    pod = f"{cluster}-head-e2e"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{cluster}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "name": cluster,
            "namespace": meta["namespace"],
        },
        "type": "Warning",
        "reason": "FailedToCreateHeadPod",
        "message": QUOTA_MESSAGE.format(pod=pod),
        "source": {"component": "raycluster-controller"},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    core.create_namespaced_event(meta["namespace"], event)
    return pod


def run_startup_scenario(
    api_client: k8s_client.ApiClient,
    namespace: str,
    job: str,
    cause: str,
    *,
    play_node: bool = True,
    condition_timeout: float = 60.0,
    deadline_timeout: float = 120.0,
) -> dict[str, Any]:
    """Assert the job gets StartupBlocked naming the cause within `condition_timeout`, then ends
    Failed (PreRunningDeadlineExceeded, the cause in its message) with its RayJob suspended.
    Returns the final job; its status has `seconds_to_condition` added (measured here)."""
    custom = k8s_client.CustomObjectsApi(api_client)
    core = k8s_client.CoreV1Api(api_client)

    def rayjob() -> dict[str, Any] | None:
        try:
            return custom.get_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", f"{job}-a0")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def read_job() -> dict[str, Any]:
        return custom.get_namespaced_custom_object("rlhf.io", "v1alpha1", namespace, "rlhfjobs", job)

    current = eventually(rayjob, 30, f"RayJob {job}-a0")
    started = time.monotonic()
    pod = None
    if play_node:  # what KubeRay writes first: the RayJob is Initializing its RayCluster
        cluster = f"{job}-a0-e2e"
        status = {"jobDeploymentStatus": "Initializing", "rayClusterName": cluster}
        custom.patch_namespaced_custom_object_status(
            "ray.io", "v1", namespace, "rayjobs", f"{job}-a0", {"status": status}
        )
        if cause == "admission":
            pod = post_refusal_event(core, current, cluster)
        else:
            pod = make_head_pod(core, current, cause)
    reason = EXPECTED_REASON[cause]

    def blocked() -> dict[str, Any] | None:
        cond = _condition(read_job(), "StartupBlocked")
        return cond if cond and cond["status"] == "True" and cond["reason"] == reason else None

    cond = eventually(blocked, condition_timeout, f"{job}: StartupBlocked={reason}")
    seconds_to_condition = time.monotonic() - started
    if pod is not None:
        assert pod in cond["message"], cond
    if cause == "unschedulable" and play_node:
        assert "Insufficient nvidia.com/gpu" in cond["message"], cond
    if cause == "admission" and play_node:
        assert "exceeded quota" in cond["message"], cond
    if cause == "admission" and play_node:
        assert "exceeded quota" in cond["message"], cond
    if cause == "image-pull":
        assert "ImagePullBackOff" in cond["message"] or "ErrImagePull" in cond["message"], cond

    def failed() -> dict[str, Any] | None:
        body = read_job()
        return body if (body.get("status") or {}).get("phase") == "Failed" else None

    final = eventually(failed, deadline_timeout, f"{job} to fail at its pre-running deadline")
    failure = _condition(final, "Failed")
    assert failure is not None and failure["reason"] == "PreRunningDeadlineExceeded", final["status"]
    assert (
        reason in final["status"]["message"]
        and "spec.preRunningDeadlineSeconds" in final["status"]["message"]
    )
    assert (rayjob() or {}).get("spec", {}).get("suspend") is True, "the RayJob of a failed job is suspended"
    final["status"]["seconds_to_condition"] = round(seconds_to_condition, 2)
    return final
