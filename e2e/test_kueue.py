"""RLHFJobs with spec.queueName against the real Kueue controller (e2e/kueue.py: built from its Go
module, webhooks on loopback) through its RayJob integration, with the operator as a subprocess
holding the chart's RBAC.

- Two jobs competing for one ClusterQueue's quota: the first is admitted, the second stays Queued
  (Admitted False, reason Pending) until the first is deleted, then it is admitted.
- Preemption: a higher-priority job takes the quota of a running lower-priority one; Kueue suspends
  the victim's RayJob and the operator reports it Queued, Admitted False reason Preempted, with a
  Warning event; when the preemptor goes, the victim is admitted again.

No kubelet runs here, so no Ray pod starts: admission is Kueue's decision on quota alone. (The
preemption of a job training on a real node, with its SIGTERM checkpoint, needs the real node of
e2e/cluster.py's node mode and is not run here.)
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_kube import ControlPlane, Kubectl, free_port
from e2e_kube import eventually as poll_until
from kueue import queue_documents, start_kueue
from test_operator import Api, Operators, example

pytestmark = pytest.mark.e2e

eventually = functools.partial(poll_until, interval=0.2)
PREFIX = f"rlhfq-{secrets.token_hex(3)}"
QUEUE = "team-queue"
# One job needs 3 CPUs (the head 2.5, KubeRay's submitter 0.5); the ClusterQueue has 4.
HEAD = {
    "resources": {"requests": {"cpu": "2500m", "memory": "2Gi"}, "limits": {"cpu": "2500m", "memory": "2Gi"}}
}


@pytest.fixture(scope="module")
def kueue(
    control_plane: ControlPlane, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    controller = start_kueue(
        kubectl,
        control_plane.kubeconfig,
        control_plane.ca_file.parent,
        tmp_path_factory.mktemp("kueue"),
        free_port,
    )
    yield controller
    controller.stop()


@pytest.fixture(scope="module")
def queue_operator(
    control_plane: ControlPlane, kubectl: Kubectl, kueue: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    home = f"{PREFIX}-home"
    kubectl("create", "namespace", home)
    workdir = tmp_path_factory.mktemp("queue-operator")
    policy = workdir / "policy.yaml"
    policy.write_text(yaml.safe_dump({"allowedPriorityClasses": ["rlhf-e2e-low", "rlhf-e2e-high"]}))
    operators = Operators(control_plane, kubectl, home, workdir)
    # No spec.managedBy: Kueue's RayJob integration takes only RayJobs managed by KubeRay.
    yield operators.start(f"{PREFIX}-*", managed_by=None, RLHF_OPERATOR_POLICY=str(policy))
    operators.close()
    kubectl("delete", "namespace", home, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> Api:
    return Api(kubeconfig)


@pytest.fixture
def queue_namespace(kubectl: Kubectl, kueue: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace with a LocalQueue on its own ClusterQueue of 4 CPUs (preemption by priority)."""
    name = f"{PREFIX}-{request.node.name.removeprefix('test_')[:30].replace('_', '-').strip('-')}"
    kubectl("create", "namespace", name)
    for doc in queue_documents(name, QUEUE, "e2e-cpu", cpu="4"):
        kubectl.apply(doc)
    yield name
    # The jobs first: with the queue or the namespace gone, Kueue would evict an admitted job, and the
    # operator's event about it would be refused in a terminating namespace.
    kubectl("delete", "rlhfjobs", "--all", "--wait=true", "--timeout=60s", namespace=name, check=False)
    kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
    kubectl("delete", "clusterqueue", name, "--wait=false", "--ignore-not-found", check=False)


def queued_job(name: str, **spec: Any) -> dict[str, Any]:
    return example("tiny-grpo-cpu", name, queueName=QUEUE, head=HEAD, **spec)


def admitted(job: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in (job.get("status") or {}).get("conditions", []) if c["type"] == "Admitted")


def state(api: Api, namespace: str, name: str) -> tuple[str | None, str | None, str | None]:
    job = api.job(namespace, name)
    status = job.get("status") or {}
    cond = next((c for c in status.get("conditions", []) if c["type"] == "Admitted"), {})
    return status.get("phase"), cond.get("status"), cond.get("reason")


def test_two_jobs_compete_for_one_queue_and_the_second_waits(
    queue_operator: Any, api: Api, kubectl: Kubectl, queue_namespace: str
) -> None:
    ns = queue_namespace
    kubectl.apply(queued_job("first"), namespace=ns)
    eventually(lambda: state(api, ns, "first")[1:] == ("True", "Admitted"), 60, "first admitted")
    assert api.rayjob(ns, "first-a0")["spec"].get("suspend", False) is False  # Kueue started it

    kubectl.apply(queued_job("second"), namespace=ns)
    eventually(lambda: state(api, ns, "second") == ("Queued", "False", "Pending"), 60, "second queued")
    assert api.rayjob(ns, "second-a0")["spec"].get("suspend") is True
    listing = kubectl("get", "rlhfjobs", namespace=ns).stdout
    assert any(line.split()[:2] == ["second", "Queued"] for line in listing.splitlines()), listing
    assert "waiting for Kueue" in api.job(ns, "second")["status"]["message"]

    kubectl("delete", "rlhfjob", "first", namespace=ns)
    eventually(lambda: state(api, ns, "second")[1:] == ("True", "Admitted"), 90, "second admitted")
    assert api.job(ns, "second")["status"]["phase"] != "Queued"


def test_a_higher_priority_job_preempts_and_the_victim_is_requeued(
    queue_operator: Any, api: Api, kubectl: Kubectl, queue_namespace: str
) -> None:
    ns = queue_namespace
    for name, value in (("rlhf-e2e-low", 100), ("rlhf-e2e-high", 1000)):
        kubectl.apply(
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": name},
                "value": value,
            }
        )
    kubectl.apply(queued_job("victim", priorityClassName="rlhf-e2e-low"), namespace=ns)
    eventually(lambda: state(api, ns, "victim")[1:] == ("True", "Admitted"), 60, "victim admitted")

    kubectl.apply(queued_job("urgent", priorityClassName="rlhf-e2e-high"), namespace=ns)
    eventually(lambda: state(api, ns, "urgent")[1:] == ("True", "Admitted"), 90, "urgent admitted")
    eventually(lambda: state(api, ns, "victim") == ("Queued", "False", "Preempted"), 60, "victim preempted")
    assert api.rayjob(ns, "victim-a0")["spec"].get("suspend") is True
    events = kubectl(
        "get", "events", "--field-selector=involvedObject.name=victim", "-o", "yaml", namespace=ns
    ).stdout
    assert any(e["reason"] == "Preempted" and e["type"] == "Warning" for e in yaml.safe_load(events)["items"])

    kubectl("delete", "rlhfjob", "urgent", namespace=ns)
    eventually(lambda: state(api, ns, "victim")[1:] == ("True", "Admitted"), 90, "victim readmitted")
    assert api.rayjob(ns, "victim-a0")["spec"].get("suspend", False) is False
