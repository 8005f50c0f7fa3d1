"""Issues 12, 15 and 18 together on the real node (node_cluster fixture, e2e/conftest.py): the
trainer killed after a checkpoint resumes in the operator's next attempt, `rlhf logs -f` streams a
running job, an image that cannot be pulled blocks the start and fails the job at its deadline, and
an actor with cpuRanks 2 trains across two worker pods.

Each test runs one tiny CPU job (examples/tiny-grpo-cpu-cluster.yaml, few steps) in its own
namespace.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import config as k8s_config
from node_jobs import owned, status_of, tiny_job, watch
from node_workloads import VOLUMES, NodeCluster
from startup_scenario import run_startup_scenario

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parent.parent
DRIVER_PID_FILE = "/tmp/rlhf-driver.pid"  # RLHF_DRIVER_PID_FILE on the head (operator render.py)
STEP_LINE = re.compile(r"step (\d+)/(\d+) .*reward")


def _pods(kubectl, namespace: str, role: str) -> list[dict[str, Any]]:
    return kubectl.json("get", "pods", "-l", f"rlhf.io/role={role}", namespace=namespace)["items"]


def test_a_killed_trainer_process_resumes_in_the_next_attempt(
    node_cluster: NodeCluster, node_namespace: str
) -> None:
    """The driver (the trainer) is killed after a checkpoint: its Ray job fails, so the RayJob fails
    (KubeRay does not retry it: backoffLimit 0), the operator starts attempt 1, which continues
    from latestCheckpoint and succeeds."""
    kubectl, name, steps = node_cluster.kubectl, "killed", 60
    kubectl.apply(tiny_job(name, steps=steps, every=10), namespace=node_namespace)
    seen = watch(kubectl, node_namespace, name, lambda s: bool(s.get("latestCheckpoint")), timeout=600)
    checkpoint = seen[-1]["latestCheckpoint"]["step"]
    assert seen[-1].get("phase") == "Running" and checkpoint < steps, seen[-1]
    head = [p["metadata"]["name"] for p in _pods(kubectl, node_namespace, "head")]
    assert len(head) == 1, head
    kill = f"kill -9 $(cat {DRIVER_PID_FILE})"
    kubectl("exec", head[0], "-c", "ray-head", "--", "sh", "-c", kill, namespace=node_namespace)
    killed_at = seen[-1]["progress"]["step"]

    after = watch(kubectl, node_namespace, name, lambda s: False, timeout=720)
    final = after[-1]
    print(f"[node-cross] killed at step {killed_at} (checkpoint {checkpoint}); final {final.get('phase')}")
    assert final.get("phase") == "Succeeded", final
    assert final.get("attempt", 0) >= 1, final
    rayjobs = kubectl("get", "rayjobs", "-o", "name", namespace=node_namespace).stdout.split()
    assert f"rayjob.ray.io/{name}-a1" in rayjobs, rayjobs
    resumed = [s["progress"]["step"] for s in after if s.get("attempt", 0) >= 1 and s.get("progress")]
    new = [step for step in resumed if step != killed_at]
    assert new and min(new) >= checkpoint, (checkpoint, killed_at, resumed)
    assert final["progress"]["step"] == steps and final["latestCheckpoint"]["step"] == steps
    print(f"[node-cross] attempt {final['attempt']} resumed at step {min(new)}, ended at {steps}")


def test_rlhf_logs_follows_a_running_jobs_trainer_output(
    node_cluster: NodeCluster, node_namespace: str
) -> None:
    kubectl, name, steps = node_cluster.kubectl, "followed", 30
    kubectl.apply(tiny_job(name, steps=steps, every=30), namespace=node_namespace)
    watch(kubectl, node_namespace, name, lambda s: s.get("phase") == "Running", timeout=600)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'operator'}:{REPO / 'trainer'}"}
    kubeconfig = str(node_cluster.control_plane.kubeconfig)
    cmd = [sys.executable, "-m", "rlhf_trainer.cli", "logs", name, "-n", node_namespace, "-f"]
    proc = subprocess.Popen(
        [*cmd, "--kubeconfig", kubeconfig],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    while_running: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if STEP_LINE.search(line) and status_of(kubectl, node_namespace, name).get("phase") == "Running":
                while_running.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        final = watch(kubectl, node_namespace, name, lambda s: False, timeout=600)[-1]
        assert final.get("phase") == "Succeeded", final
        proc.wait(timeout=60)  # -f ends with the submitter's container
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, lines[-20:]
    assert while_running, lines[-40:]
    shown = [int(m.group(1)) for m in map(STEP_LINE.search, lines) if m]
    assert shown and shown[-1] == steps and len(set(shown)) >= 2, shown
    print(
        f"[node-cross] rlhf logs -f: {len(while_running)} step lines while Running, steps {shown[0]}..{shown[-1]}"
    )


def test_an_image_that_cannot_be_pulled_blocks_the_start_and_fails_at_the_deadline(
    node_cluster: NodeCluster, node_namespace: str
) -> None:
    """The trainer image's repository with a tag nobody built (allowed by the platform policy):
    the kubelet cannot pull it (no registry on localhost), the operator says StartupBlocked
    ImagePullFailed, and the job fails at its pre-running deadline."""
    job = tiny_job("unpullable", steps=4, every=4)
    repository = node_cluster.images["trainer-cpu"].rsplit(":", 1)[0]
    job["spec"].update(image=f"{repository}:no-such-tag", imagePullPolicy="IfNotPresent")
    blocked = _blocked_at_the_deadline(node_cluster, node_namespace, job, "image-pull")
    assert "no-such-tag" in blocked["message"], blocked


def test_a_job_asking_for_gpus_the_node_lacks_is_unschedulable_and_fails_at_the_deadline(
    node_cluster: NodeCluster, node_namespace: str
) -> None:
    """The tiny job's actor on a GPU: the real scheduler cannot place its GPU worker pod on this
    CPU node, the operator says StartupBlocked Unschedulable with the scheduler's message, and the
    job fails at its pre-running deadline."""
    job = tiny_job("no-gpus", steps=4, every=4)
    job["spec"]["models"]["actor"]["gpus"] = 1
    blocked = _blocked_at_the_deadline(node_cluster, node_namespace, job, "unschedulable")
    assert "nvidia.com/gpu" in blocked["message"], blocked


def test_an_actor_with_two_cpu_ranks_trains_across_two_worker_pods(
    node_cluster: NodeCluster, node_namespace: str
) -> None:
    kubectl, name, steps = node_cluster.kubectl, "ranks", 6
    job = tiny_job(name, steps=steps, every=6)
    job["spec"]["models"]["actor"].update(cpuRanks=2, zeroStage=2)
    kubectl.apply(job, namespace=node_namespace)
    workers: set[str] = set()

    def record_workers(status: dict[str, Any]) -> bool:
        for pod in _pods(kubectl, node_namespace, "worker"):
            if pod["status"].get("phase") == "Running":
                assert pod["spec"]["nodeName"] == node_cluster.node_name, pod["spec"]
                workers.add(pod["metadata"]["name"])
        return False

    started = time.monotonic()
    final = watch(kubectl, node_namespace, name, record_workers, timeout=720)[-1]
    assert final.get("phase") == "Succeeded", final
    assert len(workers) == 2, (workers, owned(kubectl, node_namespace, "pods"))
    assert final["progress"]["step"] == steps and final["latestCheckpoint"]["step"] == steps, final
    # Each rank wrote its own ZeRO partition onto the claim (the hostPath volume of this namespace).
    actor = VOLUMES / node_namespace / "checkpoints" / Path(final["latestCheckpoint"]["path"]).name / "actor"
    assert json.loads((actor / "ranks.json").read_text())["world_size"] == 2
    partitions = sorted(p.name for p in (actor / "engine").glob("zero_pp_rank_*_optim_states.pt"))
    assert [p.split("_")[3] for p in partitions] == ["0", "1"], partitions
    print(
        f"[node-cross] cpuRanks 2 on pods {sorted(workers)}: Succeeded in {time.monotonic() - started:.0f}s"
    )


def _blocked_at_the_deadline(
    node_cluster: NodeCluster, namespace: str, job: dict[str, Any], scenario: str
) -> dict[str, Any]:
    """Apply `job` with a 30 s pre-running deadline, play the startup scenario against the real
    node (startup_scenario.run_startup_scenario: the StartupBlocked condition, then Failed at the
    deadline) and return that condition."""
    job["spec"]["preRunningDeadlineSeconds"] = 30
    node_cluster.kubectl.apply(job, namespace=namespace)
    client = k8s_config.new_client_from_config(config_file=str(node_cluster.control_plane.kubeconfig))
    name = job["metadata"]["name"]
    final = run_startup_scenario(
        client, namespace, name, scenario, play_node=False, condition_timeout=60, deadline_timeout=90
    )
    blocked = next(c for c in final["status"]["conditions"] if c["type"] == "StartupBlocked")
    print(
        f"[node-cross] StartupBlocked {blocked['reason']} after {final['status']['seconds_to_condition']} s"
    )
    return blocked
