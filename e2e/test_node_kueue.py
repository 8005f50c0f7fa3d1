"""Kueue preempts a job training on the real node (node_cluster fixture, e2e/conftest.py): the
victim's trainer gets SIGTERM through its head's preStop hook, commits a checkpoint of the step in
progress, the job shows Queued (Admitted False, reason Preempted), and when the preemptor goes it
is readmitted, resumes from that checkpoint and succeeds.

The Kueue controller (e2e/kueue.py) runs against the node's control plane; the operator is the
chart's Deployment, upgraded for this module to allow two PriorityClasses (policy
allowedPriorityClasses) and restored afterwards. The ClusterQueue holds one job: each asks for
1 CPU (its head 500m, KubeRay's submitter 500m) and the quota is 1.5 CPUs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_kube import free_port
from kueue import KueueController, queue_documents, start_kueue
from node_jobs import status_of, tiny_job, watch
from node_workloads import CHART, OPERATOR_NAMESPACE, RELEASE, VOLUMES, NodeCluster

pytestmark = pytest.mark.timeout(1200)

QUEUE, FLAVOR = "node-queue", "node-cpu"
LOW, HIGH = "rlhf-node-low", "rlhf-node-high"
HEAD = {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}
STEPS, EVERY = 400, 200  # ~0.1 s a step; the status shows progress every 10 s (about step 100)


def _allow_priority_classes(node_cluster: NodeCluster, names: list[str]) -> None:
    """helm upgrade of the operator's release with only policy.allowedPriorityClasses changed (the
    policy's checksum annotation rolls the Deployment; --wait waits for it)."""
    proc = node_cluster.helm(
        "upgrade",
        RELEASE,
        str(CHART),
        f"--namespace={OPERATOR_NAMESPACE}",
        "--reuse-values",
        "--wait",
        "--timeout=300s",
        f"--set-json=policy.allowedPriorityClasses={json.dumps(names)}",
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"helm upgrade of the policy failed: {proc.stderr.strip()}")


@pytest.fixture(scope="module")
def kueue(node_cluster: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KueueController]:
    plane, kubectl = node_cluster.control_plane, node_cluster.kubectl
    controller = start_kueue(
        kubectl, plane.kubeconfig, plane.ca_file.parent, tmp_path_factory.mktemp("kueue"), free_port
    )
    for name, value in ((LOW, 100), (HIGH, 1000)):
        kubectl.apply(
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": name},
                "value": value,
            }
        )
    try:
        _allow_priority_classes(node_cluster, [LOW, HIGH])
        yield controller
    finally:
        _allow_priority_classes(node_cluster, [])
        controller.stop()
        kubectl("delete", "priorityclass", LOW, HIGH, "--ignore-not-found", check=False)


@pytest.fixture
def queue_namespace(node_cluster: NodeCluster, node_namespace: str, kueue: KueueController) -> Iterator[str]:
    """node_namespace with a LocalQueue on a ClusterQueue of its own: 1.5 CPUs, preemption by priority."""
    kubectl, ns = node_cluster.kubectl, node_namespace
    for doc in queue_documents(ns, QUEUE, FLAVOR, cpu="1500m"):
        kubectl.apply(doc)
    yield ns
    # The jobs before the queue: with the queue gone Kueue would evict an admitted job.
    kubectl("delete", "rlhfjobs", "--all", "--wait=true", "--timeout=120s", namespace=ns, check=False)
    kubectl("delete", "clusterqueue", ns, "--wait=false", "--ignore-not-found", check=False)


def _queued_job(name: str, priority: str) -> dict[str, Any]:
    job = tiny_job(name, steps=STEPS, every=EVERY)
    job["spec"].update(
        queueName=QUEUE, priorityClassName=priority, head=HEAD, terminationGracePeriodSeconds=120
    )
    return job


def _admitted(status: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    cond = next((c for c in status.get("conditions") or [] if c.get("type") == "Admitted"), {})
    return status.get("phase"), cond.get("status"), cond.get("reason")


def _step(status: dict[str, Any], key: str = "progress") -> int:
    return int((status.get(key) or {}).get("step") or 0)


def _pods(node_cluster: NodeCluster, namespace: str, job: str) -> list[str]:
    out = node_cluster.kubectl("get", "pods", "-l", f"rlhf.io/job={job}", "-o", "name", namespace=namespace)
    return out.stdout.split()


def test_kueue_preempts_a_training_job_which_checkpoints_and_resumes(
    node_cluster: NodeCluster, queue_namespace: str
) -> None:
    kubectl, ns = node_cluster.kubectl, queue_namespace
    kubectl.apply(_queued_job("victim", LOW), namespace=ns)
    before = watch(
        kubectl, ns, "victim", lambda s: s.get("phase") == "Running" and _step(s) >= 3, timeout=600
    )
    assert before[-1].get("phase") == "Running", before[-1]
    assert _admitted(before[-1])[1:] == ("True", "Admitted"), before[-1]
    requested_at = _step(before[-1])

    urgent = _queued_job("urgent", HIGH)
    urgent["spec"]["checkpoint"]["volume"] = {"emptyDir": {}}  # not the victim's claim: its own checkpoints
    kubectl.apply(urgent, namespace=ns)
    # Kueue suspends the victim's RayJob; KubeRay deletes its cluster; the head's preStop hook sends
    # SIGTERM to the trainer, which finishes the step, commits a checkpoint and exits.
    preempted = watch(
        kubectl,
        ns,
        "victim",
        lambda s: _admitted(s) == ("Queued", "False", "Preempted") and not _pods(node_cluster, ns, "victim"),
        timeout=300,
    )
    status = status_of(kubectl, ns, "victim")  # after the head pod is gone: its last write is in
    checkpoint, reached = _step(status, "latestCheckpoint"), max(_step(s) for s in before + preempted)
    print(
        f"[node-kueue] urgent applied at step {requested_at}; victim preempted at step {reached}, "
        f"checkpoint {checkpoint}, attempt {status.get('attempt', 0)}, phase {status.get('phase')}"
    )
    assert _admitted(status) == ("Queued", "False", "Preempted"), status
    assert kubectl.json("get", "rayjob", "victim-a0", namespace=ns)["spec"].get("suspend") is True
    # The SIGTERM checkpoint: the step in progress, not a periodic one (every EVERY steps).
    assert requested_at <= checkpoint and reached <= checkpoint and checkpoint % EVERY != 0, (
        requested_at,
        reached,
        checkpoint,
    )
    committed = Path(status["latestCheckpoint"]["path"]).name
    assert committed.startswith(f"step_{checkpoint:06d}.a000000.r000"), status
    assert (VOLUMES / ns / "checkpoints" / committed / "COMMITTED").is_file()
    watch(kubectl, ns, "urgent", lambda s: _admitted(s)[1:] == ("True", "Admitted"), timeout=120)

    kubectl("delete", "rlhfjob", "urgent", "--wait=true", "--timeout=180s", namespace=ns)
    after = watch(kubectl, ns, "victim", lambda s: False, timeout=900)
    final = after[-1]
    steps = [_step(s) for s in after if s.get("phase") == "Running"]
    new = [step for step in steps if step != reached]
    print(
        f"[node-kueue] readmitted: attempt {final.get('attempt', 0)}, steps {min(new, default=None)}.."
        f"{max(new, default=None)}, final {final.get('phase')}"
    )
    assert final.get("phase") == "Succeeded", final
    assert new and min(new) > checkpoint, (checkpoint, steps)  # continued after it, never from 1
    assert _step(final) == STEPS and _step(final, "latestCheckpoint") == STEPS, final
