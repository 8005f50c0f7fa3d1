"""`rlhf logs JOB`: the trainer's own output, from the submitter pod of one attempt.

The trainer runs as the Ray driver; KubeRay's submitter Job (`ray job submit`, one per RayJob,
named like it: `<job>-a<attempt>`) streams the driver's log to its pod's stdout. That pod carries
the operator's labels (`rlhf.io/job`, `rlhf.io/attempt`, `rlhf.io/role=submitter`, set through the
RayJob's submitterPodTemplate), so the equivalent kubectl command is

    kubectl logs -n NS -l rlhf.io/job=JOB,rlhf.io/attempt=N,rlhf.io/role=submitter -f

The head pod's log (`rlhf.io/role=head`) is `ray start`'s output, not the trainer's.
The attempt is the job's current one (status.attempt) unless `--attempt N` asks for another; a
Job may have retried its pod, so the newest pod of the attempt is read.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

LABEL_JOB = "rlhf.io/job"
LABEL_ATTEMPT = "rlhf.io/attempt"
LABEL_ROLE = "rlhf.io/role"
SUBMITTER_ROLE = "submitter"
SUBMITTER_CONTAINER = "ray-job-submitter"


class LogsError(Exception):
    """No log to show yet, or no such job: the message says why and what to run instead."""


def job_attempt(job: dict[str, Any]) -> int:
    """The job's current attempt (0 before the operator has written one)."""
    value = (job.get("status") or {}).get("attempt")
    return value if isinstance(value, int) else 0


def submitter_selector(job_name: str, attempt: int) -> str:
    return f"{LABEL_JOB}={job_name},{LABEL_ATTEMPT}={attempt},{LABEL_ROLE}={SUBMITTER_ROLE}"


def newest_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most recently created pod (a retried submitter Job has several)."""

    def created(pod: dict[str, Any]) -> tuple[str, str]:
        meta = pod.get("metadata") or {}
        return (str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""))

    return max(pods, key=created) if pods else None


class JobLogs:
    """Finds and reads one job's trainer log through the API server."""

    def __init__(self, api_client: k8s_client.ApiClient, namespace: str, job_name: str):
        self.core = k8s_client.CoreV1Api(api_client)
        self.custom = k8s_client.CustomObjectsApi(api_client)
        self.namespace, self.job_name = namespace, job_name

    def job(self) -> dict[str, Any]:
        try:
            return self.custom.get_namespaced_custom_object(
                "rlhf.io", "v1alpha1", self.namespace, "rlhfjobs", self.job_name
            )
        except ApiException as exc:
            if exc.status == 404:
                raise LogsError(f"RLHFJob {self.namespace}/{self.job_name} not found") from None
            raise

    def submitter_pod(self, attempt: int | None = None) -> tuple[int, dict[str, Any]]:
        """(attempt, its newest submitter pod); LogsError when there is none yet."""
        job = self.job()
        current = job_attempt(job)
        chosen = current if attempt is None else attempt
        if chosen < 0 or chosen > current:
            raise LogsError(
                f"RLHFJob {self.namespace}/{self.job_name} has attempts 0..{current}; --attempt {chosen} is not one"
            )
        selector = submitter_selector(self.job_name, chosen)
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).to_dict()["items"]
        pod = newest_pod([_camel_meta(p) for p in pods])
        if pod is None:
            status = job.get("status") or {}
            phase = status.get("phase") or "Pending"
            why = status.get("message") or "the Ray cluster is not ready yet"
            raise LogsError(
                f"RLHFJob {self.namespace}/{self.job_name} attempt {chosen} has no trainer log yet "
                f"(phase {phase}: {why}); the trainer's log starts once its Ray cluster is ready. "
                f"See `kubectl describe rlhfjob {self.job_name} -n {self.namespace}` (StartupBlocked)"
            )
        return chosen, pod

    def stream(self, pod: dict[str, Any], follow: bool, out: IO[bytes]) -> None:
        """Copy the submitter container's log to `out` (until the pod ends when following)."""
        name = pod["metadata"]["name"]
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Pending":
            raise LogsError(f"pod {self.namespace}/{name} is Pending: the trainer has not started yet")
        try:
            response = self.core.read_namespaced_pod_log(
                name, self.namespace, container=SUBMITTER_CONTAINER, follow=follow, _preload_content=False
            )
        except ApiException as exc:
            raise LogsError(f"cannot read the log of pod {self.namespace}/{name}: {_reason(exc)}") from None
        try:
            for chunk in response.stream(amt=4096, decode_content=True):
                out.write(chunk)
                out.flush()
        finally:
            response.release_conn()


def _camel_meta(pod: dict[str, Any]) -> dict[str, Any]:
    """The client's snake_case pod dict with the few keys read here in their wire names."""
    meta = pod.get("metadata") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "creationTimestamp": str(meta.get("creation_timestamp") or ""),
        },
        "status": {"phase": (pod.get("status") or {}).get("phase")},
    }


def _reason(exc: ApiException) -> str:
    import json

    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason or f"HTTP {exc.status}")


def default_namespace(kubeconfig: str | None) -> str:
    """The kubeconfig context's namespace, else `default` (as kubectl does)."""
    from kubernetes import config as k8s_config

    try:
        _, active = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
    except Exception:  # noqa: BLE001 - in a pod, or no kubeconfig: kubectl's default
        return "default"
    return (active or {}).get("context", {}).get("namespace") or "default"


def run_logs(
    job: str, namespace: str | None, follow: bool, attempt: int | None, kubeconfig: str | None
) -> int:
    """`rlhf logs`: 0 when the log was shown, 1 with one line on stderr otherwise."""
    from rlhf_operator.kube import load_api_client

    namespace = namespace or default_namespace(kubeconfig)
    logs = JobLogs(load_api_client(kubeconfig), namespace, job)
    try:
        chosen, pod = logs.submitter_pod(attempt)
        print(f"# {namespace}/{job} attempt {chosen}: pod {pod['metadata']['name']}", file=sys.stderr)
        logs.stream(pod, follow, sys.stdout.buffer)
    except LogsError as exc:
        print(f"rlhf logs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
