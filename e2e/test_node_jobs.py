"""RLHFJobs end to end on the real node: the RLHF operator from its chart's Deployment, the real
KubeRay controller, the trainer image's pods running `rlhf train` and writing the job's status
through their own ServiceAccount (node_cluster fixture, e2e/conftest.py).

One tiny CPU job (examples/tiny-grpo-cpu-cluster.yaml, fewer steps) per test; each test shares the
node with the others and cleans its namespace up.
"""

from __future__ import annotations

from typing import Any

import pytest
from node_jobs import owned, tiny_job, watch
from node_workloads import NodeCluster

pytestmark = pytest.mark.timeout(900)


def test_the_operator_runs_from_its_chart_with_the_local_images(node_cluster: NodeCluster) -> None:
    kubectl = node_cluster.kubectl
    pods = kubectl.json("get", "pods", namespace=node_cluster.operator_namespace)["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"]
    assert running, f"no operator pod running: {[p['status'] for p in pods]}"
    assert running[0]["spec"]["containers"][0]["image"] == node_cluster.images["operator"]
    assert running[0]["spec"]["nodeName"] == node_cluster.node_name
    releases = node_cluster.helm("list", "-n", node_cluster.operator_namespace, "-o", "json").stdout
    assert '"status":"deployed"' in releases


def test_a_tiny_job_succeeds_with_progress_metrics_and_checkpoints_from_its_pods(
    node_cluster: NodeCluster, node_namespace: str
) -> None:
    kubectl, name, steps = node_cluster.kubectl, "tiny", 40
    kubectl.apply(tiny_job(name, steps=steps, every=20), namespace=node_namespace)
    table_rows: list[str] = []
    submitter_jobs: set[str] = set()  # KubeRay's submitter Job, found by the job's labels

    def record_table(status: dict[str, Any]) -> bool:
        if status.get("phase") == "Running":
            table_rows.append(
                kubectl("get", "rlhfjobs", name, "--no-headers", namespace=node_namespace).stdout
            )
            selector = f"rlhf.io/job={name},rlhf.io/role=submitter"
            found = kubectl("get", "jobs", "-l", selector, "-o", "name", namespace=node_namespace).stdout
            submitter_jobs.update(found.split())
        return False

    seen = watch(kubectl, node_namespace, name, record_table, timeout=720)
    final = seen[-1]
    assert final.get("phase") == "Succeeded", final
    phases = [s.get("phase") for s in seen]
    assert "Running" in phases and phases.index("Running") < len(phases) - 1, phases
    steps_seen = sorted({s["progress"]["step"] for s in seen if s.get("progress")})
    assert len(steps_seen) >= 2 and steps_seen[-1] == steps, steps_seen
    assert final["progress"]["step"] == steps and final["progress"]["totalSteps"] == steps
    assert any(f"/{steps}" in row for row in table_rows), table_rows
    assert submitter_jobs, "KubeRay's submitter Job never carried the job's labels"
    assert any("reward" in key for key in final["metrics"]), final["metrics"]
    assert [c["step"] for c in final["checkpoints"]][-1] == steps
    assert final["latestCheckpoint"]["step"] == steps
    assert final["latestCheckpoint"]["path"].startswith("/checkpoints/")


def test_a_killed_head_pod_resumes_from_the_latest_checkpoint(
    node_cluster: NodeCluster, node_namespace: str
) -> None:
    """The head pod (and the trainer in it) is killed after a checkpoint: KubeRay brings a new head
    up and resubmits the Ray job (or the operator starts the next attempt); either way the trainer
    continues from the checkpoint, never from step 1, and the job succeeds."""
    kubectl, name, steps = node_cluster.kubectl, "resume", 400
    kubectl.apply(tiny_job(name, steps=steps, every=25), namespace=node_namespace)
    seen = watch(kubectl, node_namespace, name, lambda s: bool(s.get("latestCheckpoint")), timeout=600)
    checkpoint, step_at_kill = seen[-1]["latestCheckpoint"]["step"], seen[-1]["progress"]["step"]
    assert seen[-1].get("phase") == "Running" and checkpoint < steps, seen[-1]
    head = [p for p in owned(kubectl, node_namespace, "pods") if "-head-" in p]
    assert head, owned(kubectl, node_namespace, "pods")
    kubectl("delete", head[0], "--grace-period=0", "--force", namespace=node_namespace)

    after = watch(kubectl, node_namespace, name, lambda s: False, timeout=720)
    final = after[-1]
    assert final.get("phase") == "Succeeded", final
    reported = [s["progress"]["step"] for s in after if s.get("progress")]
    new = [step for step in reported if step != step_at_kill]
    assert new and min(new) >= checkpoint, (checkpoint, step_at_kill, reported)
    assert final["progress"]["step"] == steps
    assert final["latestCheckpoint"]["step"] == steps


def test_a_bad_reward_function_fails_the_job_once_without_retries(
    node_cluster: NodeCluster, node_namespace: str
) -> None:
    kubectl, name = node_cluster.kubectl, "bad-reward"
    job = tiny_job(name, steps=40, every=20)
    job["spec"]["models"]["reward"] = [{"function": "rlhf_trainer.demo.task:no_such_reward", "weight": 1.0}]
    kubectl.apply(job, namespace=node_namespace)
    final = watch(kubectl, node_namespace, name, lambda s: False, timeout=600)[-1]
    assert final.get("phase") == "Failed", final
    assert final.get("attempt", 0) == 0, final
    assert "spec.models.reward[0].function" in final.get("message", ""), final
    rayjobs = kubectl("get", "rayjobs", "-o", "name", namespace=node_namespace).stdout.split()
    assert rayjobs == [f"rayjob.ray.io/{name}-a0"], rayjobs
