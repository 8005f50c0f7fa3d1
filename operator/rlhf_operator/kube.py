"""The operator's API calls: reads, create-if-absent, merge patches, events.

Plain REST paths through the kubernetes client's `DynamicClient.request` (dict bodies, no
discovery, the same across client versions). Every call has a timeout. Blocking: the reconciler
runs these in a worker thread.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from rlhf_trainer.api.job import API_VERSION, GROUP, KIND, PLURAL, VERSION
from rlhf_trainer.api.status import OPERATOR_FIELDS

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
    ("v1", "Event"): ("/api/v1", "events"),
    ("rbac.authorization.k8s.io/v1", "Role"): ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    (naming.RAY_API_VERSION, "RayJob"): (f"/apis/{naming.RAY_API_VERSION}", naming.RAYJOB_PLURAL),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("/apis/networking.k8s.io/v1", "networkpolicies"),
    (API_VERSION, KIND): (f"/apis/{GROUP}/{VERSION}", PLURAL),
}


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

    def create_if_absent(self, obj: dict[str, Any]) -> bool:
        """Create `obj`; an existing object of that name is adopted as is. True when created."""
        meta = obj["metadata"]
        try:
            self.request("post", self.collection(obj["apiVersion"], obj["kind"], meta["namespace"]), body=obj)
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    def write_config_map(self, obj: dict[str, Any]) -> None:
        """Create the ConfigMap, or bring an existing one's data to `obj`'s."""
        if self.create_if_absent(obj):
            return
        path = self._object_path(obj)
        live = self.request("get", path)
        if (live or {}).get("data") != obj["data"]:
            patch = {"data": {**dict.fromkeys((live or {}).get("data") or {}), **obj["data"]}}
            self.request("patch", path, body=patch, content_type=MERGE_PATCH)

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
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
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
