"""Prometheus scrapes a running job's trainer pod and the operator's pod on the real node through the
chart's PodMonitor and ServiceMonitor (node_monitoring.py), the dashboard's reward query returns the
job's reward, and `kubectl delete rlhfjob` of the running job removes every pod, the RayCluster,
the RayJob and the job's RBAC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_kube import eventually
from node_jobs import owned, status_of, tiny_job, watch
from node_monitoring import node_prometheus
from node_workloads import NodeCluster
from prometheus_server import finite_values

pytestmark = pytest.mark.timeout(900)

DASHBOARD = Path(__file__).resolve().parent.parent / "helm" / "rlhf-operator" / "dashboards" / "rlhf.json"


def dashboard_expr(metric: str, namespace: str, job: str) -> str:
    """The dashboard panel's query for metric, with Grafana's $namespace and $job set to one job."""
    exprs = [
        target["expr"]
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel.get("targets", [])
        if f"{metric}{{" in target.get("expr", "")
    ]
    assert exprs, f"no dashboard panel queries {metric}"
    return exprs[0].replace("$namespace", namespace).replace("$job", job)


def test_prometheus_scrapes_trainer_and_operator_pods_and_delete_removes_the_running_job(
    node_cluster: NodeCluster, node_namespace: str, tmp_path: Path
) -> None:
    kubectl, name = node_cluster.kubectl, "live"
    job = tiny_job(name, steps=5000, every=5000)
    # The delete below stops a training job: its head's preStop hook lets the trainer checkpoint
    # within the grace period. A short one keeps the wait for the pods' removal short.
    job["spec"]["terminationGracePeriodSeconds"] = 30
    kubectl.apply(job, namespace=node_namespace)
    watch(kubectl, node_namespace, name, lambda s: (s.get("progress") or {}).get("step", 0) >= 1, timeout=600)

    prometheus, discovery = node_prometheus(tmp_path / "prometheus", node_cluster.control_plane, kubectl)
    prometheus.start()

    def answer(expr: str) -> list[float]:
        discovery.refresh()
        return finite_values(prometheus.query(expr))

    try:
        reward = dashboard_expr("rlhf_reward_mean", node_namespace, name)
        samples = eventually(lambda: answer(reward), 120, f"{reward} to return data", interval=1)
        assert 0.0 <= samples[0] <= 1.0, samples
        # The operator's own series (ServiceMonitor: its labels honoured) name the job too.
        step = dashboard_expr("rlhf_job_step", node_namespace, name)
        eventually(lambda: answer(step), 60, f"{step} to return data", interval=1)
        targets = prometheus.api("targets")["activeTargets"]
        pods = {t["labels"].get("pod", "") for t in targets if t["health"] == "up"}
        assert any(p.startswith("rlhf-rlhf-operator-") for p in pods), targets
        assert any("head" in p for p in pods), targets
    finally:
        prometheus.stop()

    assert status_of(kubectl, node_namespace, name).get("phase") == "Running"
    assert owned(kubectl, node_namespace, "pods"), "the running job has pods"
    kubectl("delete", "rlhfjob", name, "--wait=true", "--timeout=180s", namespace=node_namespace)
    kinds = "pods,rayclusters,rayjobs,jobs,serviceaccounts,roles,rolebindings,configmaps,networkpolicies"
    eventually(lambda: not owned(kubectl, node_namespace, kinds), 180, "the job's objects to be deleted")
    eventually(
        lambda: not kubectl("get", "pods", "-o", "name", namespace=node_namespace).stdout.strip(),
        120,
        "every pod of the namespace to be gone",
    )
