"""RLHFJobs end to end on the real node: the RLHF operator from its chart's Deployment, the real
KubeRay controller, the trainer image's pods running `rlhf train` and writing the job's status
through their own ServiceAccount (node_cluster fixture, e2e/conftest.py).

One tiny CPU job (examples/tiny-grpo-cpu-cluster.yaml, fewer steps) per test; each test shares the
node with the others and cleans its namespace up.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_kube import Kubectl, eventually
from node_workloads import NodeCluster

pytestmark = pytest.mark.timeout(900)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tiny-grpo-cpu-cluster.yaml"


def tiny_job(name: str, *, steps: int, every: int) -> dict[str, Any]:
    job = yaml.safe_load(EXAMPLE.read_text())
    job["metadata"]["name"] = name
    job["spec"]["training"]["maxSteps"] = steps
    job["spec"]["checkpoint"]["everySteps"] = every
    return job


def status_of(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return kubectl.json("get", "rlhfjob", name, namespace=namespace).get("status") or {}


def watch(kubectl: Kubectl, namespace: str, name: str, until, timeout: float) -> list[dict[str, Any]]:
    """Status snapshots every half second until until(status) or the job ends; returns them all."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = status_of(kubectl, namespace, name)
        seen.append(status)
        if until(status) or status.get("phase") in ("Succeeded", "Failed"):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"rlhfjob {namespace}/{name}: timed out; last status {seen[-1] if seen else None}")


def owned(kubectl: Kubectl, namespace: str, kinds: str) -> list[str]:
    out = kubectl("get", kinds, "-l", "rlhf.io/job", "-o", "name", namespace=namespace).stdout
    return out.split()


@pytest.fixture
def job_namespace(node_cluster: NodeCluster, request: pytest.FixtureRequest):
    name = node_cluster.job_namespace(request.node.name)
    yield name
    node_cluster.kubectl.delete_namespace(name)


def test_the_operator_runs_from_its_chart_with_the_local_images(node_cluster: NodeCluster) -> None:
    kubectl = node_cluster.kubectl
    pods = kubectl.json("get", "pods", namespace=node_cluster.operator_namespace)["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"]
    assert running, f"no operator pod running: {[p['status'] for p in pods]}"
    assert running[0]["spec"]["containers"][0]["image"] == node_cluster.images["operator"]
    assert running[0]["spec"]["nodeName"] == node_cluster.node_name
    releases = node_cluster.helm("list", "-n", node_cluster.operator_namespace, "-o", "json").stdout
    assert '"status":"deployed"' in releases


def test_a_tiny_job_succeeds_reporting_progress_and_delete_removes_everything(
    node_cluster: NodeCluster, job_namespace: str
) -> None:
    kubectl, name, steps = node_cluster.kubectl, "tiny", 6
    kubectl.apply(tiny_job(name, steps=steps, every=3), namespace=job_namespace)
    table_rows: list[str] = []

    def record_table(status: dict[str, Any]) -> bool:
        if status.get("phase") == "Running":
            table_rows.append(
                kubectl("get", "rlhfjobs", name, "--no-headers", namespace=job_namespace).stdout
            )
        return False

    seen = watch(kubectl, job_namespace, name, record_table, timeout=720)
    final = seen[-1]
    assert final.get("phase") == "Succeeded", final
    phases = [s.get("phase") for s in seen]
    assert "Running" in phases and phases.index("Running") < len(phases) - 1, phases
    steps_seen = sorted({s["progress"]["step"] for s in seen if s.get("progress")})
    assert len(steps_seen) >= 2 and steps_seen[-1] == steps, steps_seen
    assert final["progress"]["step"] == steps and final["progress"]["totalSteps"] == steps
    assert any(f"/{steps}" in row for row in table_rows), table_rows
    assert any("reward" in key for key in final["metrics"]), final["metrics"]
    assert [c["step"] for c in final["checkpoints"]][-1] == steps
    assert final["latestCheckpoint"]["step"] == steps
    assert final["latestCheckpoint"]["path"].startswith("/checkpoints/")

    kubectl("delete", "rlhfjob", name, "--wait=true", "--timeout=180s", namespace=job_namespace)

    def nothing_left() -> bool:
        left = owned(
            kubectl, job_namespace, "pods,rayclusters,rayjobs,jobs,serviceaccounts,roles,rolebindings"
        )
        return not left

    eventually(nothing_left, 180, "the job's pods, RayCluster, RayJob and RBAC to be deleted")
    assert not kubectl("get", "pods", "-o", "name", namespace=job_namespace).stdout.strip()


def test_a_killed_head_pod_resumes_from_the_latest_checkpoint(
    node_cluster: NodeCluster, job_namespace: str
) -> None:
    kubectl, name, steps = node_cluster.kubectl, "resume", 9
    kubectl.apply(tiny_job(name, steps=steps, every=3), namespace=job_namespace)
    seen = watch(kubectl, job_namespace, name, lambda s: bool(s.get("latestCheckpoint")), timeout=600)
    checkpoint = seen[-1]["latestCheckpoint"]["step"]
    assert seen[-1].get("phase") == "Running", seen[-1]
    head = owned(kubectl, job_namespace, "pods")
    head = [p for p in head if "head" in p]
    assert head, owned(kubectl, job_namespace, "pods")
    kubectl("delete", head[0], "--grace-period=0", "--force", namespace=job_namespace)

    after = watch(kubectl, job_namespace, name, lambda s: False, timeout=720)
    final = after[-1]
    assert final.get("phase") == "Succeeded", final
    assert final.get("attempt", 0) >= 1, final
    # The next attempt resumed: no step it reported lies before the checkpoint it started from
    # (a restart from scratch reports 1, 2, ... again).
    second = [s["progress"]["step"] for s in after if s.get("attempt", 0) >= 1 and s.get("progress")]
    second = [step for step in second if step > 0]
    assert second and min(second) >= checkpoint, (checkpoint, second)
    assert final["progress"]["step"] == steps
