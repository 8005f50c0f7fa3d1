"""The trainer's Kubernetes status sink against the real API server, with the RBAC the operator
grants the trainer: a ServiceAccount whose Role allows only get/patch on rlhfjobs/status of its
own job. Progress, metrics and checkpoints land; the operator's fields stay untouched."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import pytest
import yaml
from e2e_kube import Kubectl

from rlhf_trainer.api.job import RLHFJob, TrainerConfig
from rlhf_trainer.api.status import RLHFJobStatus
from rlhf_trainer.telemetry import Telemetry

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
TINY_JOB = REPO / "examples" / "tiny-grpo-cpu.yaml"
OPERATOR_STATUS = {
    "phase": "Running",
    "attempt": 0,
    "conditions": [
        {
            "type": "Running",
            "status": "True",
            "reason": "RayJobRunning",
            "message": "the Ray job is running",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
        }
    ],
}


def create_job(kubectl: Kubectl, namespace: str, name: str) -> RLHFJob:
    doc = yaml.safe_load(TINY_JOB.read_text())
    doc["metadata"] = {"name": name}
    kubectl.apply(doc, namespace=namespace)
    kubectl(
        "patch",
        "rlhfjob",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": OPERATOR_STATUS}),
        namespace=namespace,
    )
    return RLHFJob.model_validate(doc)


def grant_status_access(kubectl: Kubectl, namespace: str, service_account: str, job: str) -> None:
    """The Role the operator renders for `<job>-trainer`: get/patch on this job's status only."""
    kubectl.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": service_account},
            "rules": [
                {
                    "apiGroups": ["rlhf.io"],
                    "resources": ["rlhfjobs/status"],
                    "resourceNames": [job],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        namespace=namespace,
    )
    kubectl(
        "create",
        "rolebinding",
        service_account,
        f"--role={service_account}",
        f"--serviceaccount={namespace}:{service_account}",
        namespace=namespace,
    )


def wait_until_allowed(as_sa: Kubectl, job: str, namespace: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while as_sa("get", "rlhfjob", job, "--subresource=status", namespace=namespace, check=False).returncode:
        if time.monotonic() > deadline:
            raise AssertionError(f"the RoleBinding did not take effect within {timeout:.0f}s")
        time.sleep(0.5)


def trainer_config(job: RLHFJob, namespace: str, output_dir: Path) -> TrainerConfig:
    return TrainerConfig(
        job_name=job.metadata.name,
        namespace=namespace,
        spec=job.spec,
        output_dir=str(output_dir),
        status_sink="kubernetes",
    )


def test_status_sink_patches_trainer_fields_with_the_trainer_role(
    kubectl: Kubectl,
    namespace: str,
    make_sa_kubeconfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = create_job(kubectl, namespace, "sink")
    other = create_job(kubectl, namespace, "other")
    sa_kubeconfig = make_sa_kubeconfig(namespace, "sink-trainer")
    grant_status_access(kubectl, namespace, "sink-trainer", "sink")
    wait_until_allowed(Kubectl(kubectl.binary, sa_kubeconfig), "sink", namespace)
    # Not in a pod: the sink falls back to KUBECONFIG, here the service account's token.
    monkeypatch.setenv("KUBECONFIG", str(sa_kubeconfig))

    total = job.spec.training.max_steps
    telemetry = Telemetry(
        trainer_config(job, namespace, tmp_path / "a0"), total, "grpo", stream=io.StringIO()
    )
    for step in range(1, total + 1):
        telemetry.log_step(
            step,
            {
                "reward/mean": step / total,
                "kl/mean": 0.01,
                "timing/step_s": 0.1,
                "reward/reward": step / total,
                "critic/vf_loss": float("nan"),
            },
        )
        if step % 10 == 0:
            telemetry.checkpoint_saved(step, f"/ckpt/step-{step}", hf_path=f"/ckpt/step-{step}/hf")
    telemetry.close(success=True)

    status = kubectl.json("get", "rlhfjob", "sink", namespace=namespace)["status"]
    for key, value in OPERATOR_STATUS.items():
        assert status[key] == value, f"operator-owned status.{key} changed"
    progress = status["progress"]
    assert (progress["step"], progress["totalSteps"], progress["percent"], progress["summary"]) == (
        total,
        total,
        100.0,
        f"{total}/{total}",
    )
    assert progress["reward"] == 1.0 and progress["etaSeconds"] == 0
    assert status["metrics"] == {
        "reward/mean": 1.0,
        "kl/mean": 0.01,
        "timing/step_s": 0.1,
        "reward/reward": 1.0,
    }
    keep = job.spec.checkpoint.keep
    saved = list(range(10, total + 1, 10))
    assert [c["step"] for c in status["checkpoints"]] == saved[-keep:]
    assert status["latestCheckpoint"] == status["checkpoints"][-1]
    assert status["latestCheckpoint"]["hfPath"] == f"/ckpt/step-{total}/hf"
    RLHFJobStatus.model_validate(status)
    assert kubectl("get", "rlhf", "sink", namespace=namespace).stdout.split()[6:10] == [
        "sink",
        "Running",
        "grpo",
        f"{total}/{total}",
    ]

    # A restarted attempt reads the list back (get on status) and continues it.
    second = Telemetry(trainer_config(job, namespace, tmp_path / "a1"), total, "grpo", stream=io.StringIO())
    second.checkpoint_saved(total + 1, "/ckpt/extra")
    second.close(success=True)
    status = kubectl.json("get", "rlhfjob", "sink", namespace=namespace)["status"]
    assert [c["step"] for c in status["checkpoints"]] == [*saved, total + 1][-keep:]
    assert status["phase"] == "Running"

    # The Role names one job: the other one is forbidden, which is logged once and never raised.
    with caplog.at_level(logging.INFO, logger="rlhf_trainer.telemetry.sinks"):
        stray = Telemetry(
            trainer_config(other, namespace, tmp_path / "o"), total, "grpo", stream=io.StringIO()
        )
        stray.log_step(1, {"reward/mean": 0.5})
        stray.log_step(total, {"reward/mean": 0.5})
        stray.close(success=False)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "HTTP 403" in errors[0] and "rlhfjobs/status for 'other'" in errors[0]
    untouched = kubectl.json("get", "rlhfjob", "other", namespace=namespace)["status"]
    # (metrics: {} and checkpoints: [] are the CRD schema's defaults, not writes.)
    assert {k: untouched[k] for k in OPERATOR_STATUS} == OPERATOR_STATUS
    assert "progress" not in untouched and not untouched.get("metrics") and not untouched.get("checkpoints")
