"""`rlhf logs` against the real API server: which pod it reads (the submitter of the current attempt,
the newest when its Job retried; another attempt with --attempt) and the one-line errors when there
is nothing to read yet. No kubelet runs here, so streaming a log is tested on a real node."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from e2e_kube import eventually
from kubernetes import config as k8s_config

from rlhf_trainer.logs import JobLogs, LogsError

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent


def submitter_pod(kubectl, namespace: str, name: str, attempt: int, role: str = "submitter") -> None:
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": {"rlhf.io/job": "logs", "rlhf.io/attempt": str(attempt), "rlhf.io/role": role},
            },
            "spec": {
                "automountServiceAccountToken": False,
                "containers": [{"name": "ray-job-submitter", "image": "registry.example/trainer:e2e"}],
            },
        },
        namespace=namespace,
    )


def rlhf_logs(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'operator'}:{REPO / 'trainer'}"}
    return subprocess.run(
        [sys.executable, "-m", "rlhf_trainer.cli", "logs", *args, "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_logs_picks_the_current_attempts_newest_submitter_pod_and_says_when_there_is_none(
    kubectl, kubeconfig, namespace
):
    job = yaml.safe_load((REPO / "examples" / "tiny-grpo-cpu.yaml").read_text())
    job["metadata"] = {"name": "logs"}
    kubectl.apply(job, namespace=namespace)
    kubectl("patch", "rlhfjob", "logs", "--subresource=status", "--type=merge",
            "-p", '{"status": {"attempt": 1, "phase": "Initializing", "message": "creating the Ray cluster"}}',
            namespace=namespace)  # fmt: skip

    proc = rlhf_logs(kubeconfig, "logs", "-n", namespace)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "attempt 1 has no trainer log yet (phase Initializing" in lines[0], proc.stderr
    missing = rlhf_logs(kubeconfig, "nope", "-n", namespace)
    assert missing.returncode == 1 and f"RLHFJob {namespace}/nope not found" in missing.stderr

    eventually(lambda: kubectl("get", "serviceaccount", "default", namespace=namespace, check=False).returncode == 0,
               30, "the namespace's default ServiceAccount")  # fmt: skip
    submitter_pod(kubectl, namespace, "logs-a0-sub", 0)
    submitter_pod(kubectl, namespace, "logs-a1-head", 1, role="head")
    submitter_pod(kubectl, namespace, "logs-a1-sub-old", 1)
    time.sleep(1.1)  # creation timestamps have one-second resolution
    submitter_pod(kubectl, namespace, "logs-a1-sub-new", 1)

    logs = JobLogs(k8s_config.new_client_from_config(config_file=str(kubeconfig)), namespace, "logs")
    attempt, pod = logs.submitter_pod()
    assert (attempt, pod["metadata"]["name"]) == (1, "logs-a1-sub-new")
    attempt, pod = logs.submitter_pod(0)
    assert (attempt, pod["metadata"]["name"]) == (0, "logs-a0-sub")
    with pytest.raises(LogsError, match="has attempts 0..1; --attempt 2 is not one"):
        logs.submitter_pod(2)

    # Not scheduled (no scheduler here): one line saying so, not a stack trace.
    proc = rlhf_logs(kubeconfig, "logs", "-n", namespace, "-f")
    assert proc.returncode == 1, proc.stderr
    assert "pod logs-a1-sub-new" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
