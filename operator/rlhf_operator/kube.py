"""The operator's API calls: reads, children created when absent, merge patches, events.

Plain REST paths through the kubernetes client's `DynamicClient.request` (dict bodies, no
discovery, the same across client versions). Every call has a timeout. Blocking: the reconciler
runs these in a worker thread.

Ownership: a child is created when absent; an existing object of that name is changed only when
its controller owner reference is this job's uid (`ensure_child`). Anything else raises
`NotOwnedError` and is left exactly as it is: an RLHFJob must never take over a ServiceAccount,
Role or ConfigMap someone else made.

Refusals: `refusal` tells a request the API server refused for good (invalid, denied by admission
or quota: retrying repeats it) from one worth retrying (conflicts, timeouts, 5xx, the operator's
own RBAC, which an admin can fix).
"""

from __future__ import annotations

import json
import os
import re
import socket
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from rlhf_trainer.api.job import API_VERSION, GROUP, KIND, PLURAL, VERSION
from rlhf_trainer.api.status import OPERATOR_FIELDS, rfc3339

from . import naming

MERGE_PATCH = "application/merge-patch+json"
COMPONENT = "rlhf-operator"
# Named in managedFields, so `kubectl get -o yaml --show-managed-fields` tells the operator's
# writes from the trainer's.
FIELD_MANAGER = "rlhf-operator"
# apiVersion, kind -> (path prefix, plural) of the kinds the operator writes.
COLLECTIONS = {
    ("v1", "ConfigMap"): ("/api/v1", "configmaps"),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts"),
    ("v1", "Secret"): ("/api/v1", "secrets"),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("/apis/networking.k8s.io/v1", "networkpolicies"),
    ("v1", "Event"): ("/api/v1", "events"),
    ("v1", "Pod"): ("/api/v1", "pods"),
    ("batch/v1", "Job"): ("/apis/batch/v1", "jobs"),
    ("rbac.authorization.k8s.io/v1", "Role"): ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    (naming.RAY_API_VERSION, "RayJob"): (f"/apis/{naming.RAY_API_VERSION}", naming.RAYJOB_PLURAL),
    (API_VERSION, KIND): (f"/apis/{GROUP}/{VERSION}", PLURAL),
}
# Fields of a child the operator keeps as rendered when the child is its own; other kinds are
# only ever created (a ServiceAccount has nothing to sync; a Secret's token must not rotate under
# a running cluster; a RayJob's in-place fields are patched by the plan).
SYNCED_FIELDS = {
    "ConfigMap": ("data",),
    "Role": ("rules",),
    "RoleBinding": ("subjects",),  # roleRef cannot change
    "NetworkPolicy": ("spec",),
}
# HTTP statuses of a request the server refused for good; see `refusal`.
REFUSED_STATUSES = (400, 403, 413, 422)
# The API server's RBAC denial ("... cannot create resource "rayjobs" in API group ..."): the
# operator's own permissions are wrong, which the cluster admin fixes; the job is not at fault.
_RBAC_DENIAL = re.compile(r'cannot [a-z]+ resource "')


class NotOwnedError(Exception):
    """A child's name is taken by an object this job does not control."""

    def __init__(self, obj: dict[str, Any], owner: str):
        meta = obj["metadata"]
        self.kind, self.name = obj["kind"], meta["name"]
        super().__init__(
            f"{self.kind} {meta['namespace']}/{self.name} already exists and is not this job's "
            f"({owner}); it was left unchanged. Delete or rename it, or rename the job."
        )


def load_api_client(kubeconfig: str | None = None) -> k8s_client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        configuration = k8s_client.Configuration()
        k8s_config.load_incluster_config(client_configuration=configuration)
        return k8s_client.ApiClient(configuration)
    return k8s_config.new_client_from_config(config_file=kubeconfig)


def namespace_terminating(exc: ApiException) -> bool:
    """A write refused because the namespace is being deleted (its objects go with it)."""
    return exc.status == 403 and "NamespaceTerminating" in str(getattr(exc, "body", "") or "")


def server_message(exc: ApiException) -> str:
    """The API server's own message for a failed request (its Status object), else the HTTP reason."""
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or exc.reason or f"HTTP {exc.status}")


def refusal(exc: ApiException) -> str | None:
    """The server's message when it refused a write for good (invalid object, admission, quota),
    None when the write is worth retrying."""
    if exc.status not in REFUSED_STATUSES or namespace_terminating(exc):
        return None
    message = server_message(exc)
    if exc.status == 403 and _RBAC_DENIAL.search(message):
        return None
    return message


def _owner_of(live: dict[str, Any]) -> str | None:
    refs = (live.get("metadata") or {}).get("ownerReferences") or []
    return next((ref.get("uid") for ref in refs if ref.get("controller")), None)


def _describe_owner(live: dict[str, Any]) -> str:
    refs = [ref for ref in (live.get("metadata") or {}).get("ownerReferences") or [] if ref.get("controller")]
    if not refs:
        return "it has no controller owner"
    return f"it is controlled by {refs[0].get('kind')} {refs[0].get('name')}"


def sync_patch(kind: str, live: dict[str, Any], want: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch bringing an owned child's synced fields to the rendered ones (None: in sync)."""
    patch: dict[str, Any] = {}
    for key in SYNCED_FIELDS.get(kind, ()):
        wanted, current = want.get(key), live.get(key)
        if isinstance(wanted, dict) and isinstance(current, dict):
            if kind == "ConfigMap":  # the exact key set: a stale key would be a stale file
                if current != wanted:
                    patch[key] = {**dict.fromkeys(current), **wanted}
            elif any(current.get(k) != v for k, v in wanted.items()):
                patch[key] = wanted
        elif wanted is not None and current != wanted:
            patch[key] = wanted
    return patch or None


class _Rest(DynamicClient):
    """DynamicClient.request without the discovery its constructor does: the paths are built here."""

    def __init__(self, api_client: k8s_client.ApiClient):
        self.client = api_client


class Kube:
    def __init__(self, api_client: k8s_client.ApiClient, timeout: float = 15.0):
        self._api = _Rest(api_client)
        self.timeout = timeout
        self.instance = f"{socket.gethostname()}-{os.getpid()}"

    # --- low level --------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: Any = None, content_type: str | None = None, **query: Any
    ) -> Any:
        if method in ("post", "patch"):
            query.setdefault("field_manager", FIELD_MANAGER)
        response = self._api.request(
            method,
            path,
            body=body,
            content_type=content_type,
            _request_timeout=self.timeout,
            serialize=False,  # the raw response: plain dicts, not ResourceInstance
            **query,
        )
        data = response.data
        return json.loads(data) if data else None

    @staticmethod
    def collection(api_version: str, kind: str, namespace: str) -> str:
        prefix, plural = COLLECTIONS[(api_version, kind)]
        return f"{prefix}/namespaces/{namespace}/{plural}"

    def _object_path(self, obj: dict[str, Any]) -> str:
        meta = obj["metadata"]
        return f"{self.collection(obj['apiVersion'], obj['kind'], meta['namespace'])}/{meta['name']}"

    # --- the operator's calls ---------------------------------------------------------------

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.request("get", f"{self.collection(API_VERSION, KIND, namespace)}/{name}")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_jobs(self, namespaces: list[str]) -> list[dict[str, Any]]:
        """RLHFJobs of the given namespaces (all namespaces when empty)."""
        if not namespaces:
            return self.request("get", f"/apis/{GROUP}/{VERSION}/{PLURAL}").get("items", [])
        items: list[dict[str, Any]] = []
        for namespace in namespaces:
            items += self.request("get", self.collection(API_VERSION, KIND, namespace)).get("items", [])
        return items

    def list_rayjobs(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        path = self.collection(naming.RAY_API_VERSION, "RayJob", namespace)
        return self.request("get", path, label_selector=f"{naming.LABEL_JOB}={job_name}").get("items", [])

    def list_pods(self, namespace: str, job_name: str, attempt: int) -> list[dict[str, Any]]:
        """The pods of one attempt of a job (head, workers, submitter: all carry both labels)."""
        selector = f"{naming.LABEL_JOB}={job_name},{naming.LABEL_ATTEMPT}={attempt}"
        return self.request("get", self.collection("v1", "Pod", namespace), label_selector=selector).get(
            "items", []
        )

    def label_batch_job(self, namespace: str, name: str, labels: dict[str, str]) -> None:
        """Merge `labels` into a batch Job's labels (KubeRay's submitter Job; KubeRay sets its own
        labels and none of the RayJob's)."""
        path = f"{self.collection('batch/v1', 'Job', namespace)}/{name}"
        self.request("patch", path, body={"metadata": {"labels": labels}}, content_type=MERGE_PATCH)

    def list_events(self, namespace: str, involved_name: str) -> list[dict[str, Any]]:
        """Warning events about objects named `involved_name` (a RayJob and its submitter Job share
        a name; a RayCluster has its own)."""
        selector = f"involvedObject.name={involved_name},type=Warning"
        path = self.collection("v1", "Event", namespace)
        return self.request("get", path, field_selector=selector).get("items", [])

    def ensure_child(self, obj: dict[str, Any], uid: str | None) -> bool:
        """Create `obj`, or bring the object of its name to it when it is this job's (controller
        owner reference with `uid`). True when created. Raises NotOwnedError, touching nothing,
        when the name is taken by an object the job does not control."""
        meta = obj["metadata"]
        try:
            self.request("post", self.collection(obj["apiVersion"], obj["kind"], meta["namespace"]), body=obj)
            return True
        except ApiException as exc:
            if exc.status != 409:
                raise
        path = self._object_path(obj)
        live = self.request("get", path) or {}
        if uid is None or _owner_of(live) != uid:
            raise NotOwnedError(obj, _describe_owner(live))
        patch = sync_patch(obj["kind"], live, obj)
        if patch is not None:
            # The resourceVersion makes the patch fail (409, retried) if the object changed hands since.
            patch["metadata"] = {"resourceVersion": live["metadata"]["resourceVersion"]}
            self.request("patch", path, body=patch, content_type=MERGE_PATCH)
        return False

    def get_owned(self, api_version: str, kind: str, namespace: str, name: str, uid: str | None) -> Any:
        """The object when it exists and `uid` controls it, else None."""
        try:
            live = self.request("get", f"{self.collection(api_version, kind, namespace)}/{name}")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return live if uid is not None and _owner_of(live or {}) == uid else None

    def patch_rayjob(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        path = f"{self.collection(naming.RAY_API_VERSION, 'RayJob', namespace)}/{name}"
        self.request("patch", path, body=patch, content_type=MERGE_PATCH)

    def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch of the status subresource, operator-owned fields only."""
        foreign = set(status) - set(OPERATOR_FIELDS)
        if foreign:
            raise ValueError(f"the operator must not write status fields {sorted(foreign)}")
        path = f"{self.collection(API_VERSION, KIND, namespace)}/{name}/status"
        return self.request("patch", path, body={"status": status}, content_type=MERGE_PATCH)

    def post_event(self, job: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        meta = job["metadata"]
        stamp = rfc3339(datetime.now(UTC))
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance[:128],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        self.request("post", self.collection("v1", "Event", meta["namespace"]), body=event)
