"""The cluster side of e2e/test_prometheus.py: the operator and trainer processes it runs, the tiny
PPO jobs it applies, and the RayJob status it writes in KubeRay's place (no KubeRay runs here)."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from e2e_kube import ControlPlane, Kubectl, KubectlError, free_port
from e2e_kube import eventually as poll_until

REPO = Path(__file__).resolve().parent.parent
MULTIKUEUE = "kueue.x-k8s.io/multikueue"  # a KubeRay controller another test runs leaves these alone
IMAGE = "registry.example/rlhf-trainer:e2e"


# Scenario probes shell out to kubectl: poll twice a second, not faster.
eventually = functools.partial(poll_until, interval=0.5)


def tiny_ppo_job(name: str, demo: dict[str, str], checkpoints: Path, **spec: Any) -> dict[str, Any]:
    """A PPO job with every role (critic, reference, reward function) so every metric is produced."""
    model = str(Path(demo["model"]).resolve())
    job = {
        "apiVersion": "rlhf.io/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": name},
        "spec": {
            "algorithm": {"name": "ppo", "samplesPerPrompt": 2, "kl": {"coef": 0.01}},
            "models": {
                "actor": {"model": model, "gpus": 0, "zeroStage": 0, "precision": "fp32"},
                "critic": {"model": model, "gpus": 0, "zeroStage": 0, "precision": "fp32"},
                "reference": {"model": model, "gpus": 0},
                "reward": [{"name": "task", "function": "rlhf_trainer.demo.task:reward", "weight": 1.0}],
                "rollout": {"engine": "hf", "engines": 1},
            },
            "data": {
                "prompts": {
                    "path": str(Path(demo["prompts"]).resolve()),
                    "inputKey": "prompt",
                    "labelKey": "answer",
                }
            },
            # Enough steps to outlast the test: the trainer is stopped when the module ends.
            "training": {
                "rolloutBatchSize": 4,
                "trainBatchSize": 8,
                "microBatchSize": 8,
                "maxSteps": 5000,
                "seed": 7,
            },
            "generation": {"maxPromptLength": 32, "maxNewTokens": 4},
            "checkpoint": {
                "path": str(checkpoints / name),
                "everySteps": 2,
                "keep": 1,
                "exportHF": False,
                "resume": "never",
            },
            "backoffLimit": 2,
        },
    }
    job["spec"].update(spec)
    return job


def sa_kubeconfig(
    kubectl: Kubectl, control_plane: ControlPlane, namespace: str, account: str, path: Path
) -> Path:
    """A kubeconfig that authenticates with a TokenRequest token of the ServiceAccount."""
    token = kubectl("create", "token", account, "--duration=2h", namespace=namespace).stdout.strip()
    cluster = {"server": control_plane.server, "certificate-authority": str(control_plane.ca_file)}
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "sa",
                "clusters": [{"name": "e2e", "cluster": cluster}],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [
                    {"name": "sa", "context": {"cluster": "e2e", "user": account, "namespace": namespace}}
                ],
            }
        )
    )
    return path


class Scenario:
    """The processes and cluster writes of the module, in one namespace of the control plane."""

    def __init__(self, control_plane: ControlPlane, kubectl: Kubectl, namespace: str, work: Path):
        self.control_plane, self.kubectl, self.namespace, self.work = control_plane, kubectl, namespace, work
        self.procs: list[subprocess.Popen] = []
        self.operator_log = work / "operator.log"
        self.trainer_log = work / "trainer.log"

    def start(self, argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)

    def start_operator(self, metrics_port: int) -> None:
        liveness_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_OPERATOR_")}
        env.update(
            KUBECONFIG=str(self.control_plane.kubeconfig),
            RLHF_OPERATOR_RESYNC_SECONDS="2",
            RLHF_OPERATOR_RAYJOB_MANAGED_BY=MULTIKUEUE,
        )
        argv = [
            sys.executable,
            "-m",
            "rlhf_trainer.cli",
            "operator",
            "--namespace",
            self.namespace,
            "--metrics-port",
            str(metrics_port),
            "--liveness-port",
            str(liveness_port),
            "--trainer-image",
            IMAGE,
        ]
        operator = self.start(argv, self.operator_log, env)

        def healthy() -> bool:
            if operator.poll() is not None:
                raise AssertionError(f"the operator exited:\n{self.operator_log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{liveness_port}/healthz", timeout=1) as resp:
                    return resp.status == 200
            except OSError:
                return False

        eventually(healthy, 60, "the operator's /healthz")

    def start_trainer(self, job: str, metrics_port: int) -> subprocess.Popen:
        """`rlhf train` with the config the operator rendered for the job's current attempt, as the
        trainer ServiceAccount the operator created: the RayJob entrypoint, minus the pod."""
        config_map = self.kubectl.json("get", "configmap", f"{job}-trainer-config", namespace=self.namespace)
        config = yaml.safe_load(config_map["data"]["trainer.yaml"])
        assert (config["jobName"], config["statusSink"]) == (job, "kubernetes"), config
        config.update(backend="local", metricsPort=metrics_port, outputDir=str(self.work / f"{job}-output"))
        config_file = self.work / f"{job}-trainer.yaml"
        config_file.write_text(yaml.safe_dump(config))
        kubeconfig = self.trainer_kubeconfig(job)
        env = {
            **os.environ,
            "DS_ACCELERATOR": "cpu",
            "DS_BUILD_OPS": "0",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "KUBECONFIG": str(kubeconfig),
        }
        argv = [sys.executable, "-m", "rlhf_trainer.cli", "train", "--config", str(config_file)]
        return self.start(argv, self.trainer_log, env)

    def trainer_kubeconfig(self, job: str) -> Path:
        path = self.work / f"{job}-trainer-kubeconfig"
        return sa_kubeconfig(self.kubectl, self.control_plane, self.namespace, f"{job}-trainer", path)

    def report_long_ago(self, job: str, seconds_ago: float) -> None:
        """The trainer's status report of step 3, made by its own code with the clock set back."""
        from kubernetes import config as k8s_config

        from rlhf_trainer.telemetry.sinks import KubernetesStatusSink
        from rlhf_trainer.telemetry.status import progress, trainer_status

        client = k8s_config.new_client_from_config(config_file=str(self.trainer_kubeconfig(job)))
        sink = KubernetesStatusSink(self.namespace, job, min_interval_s=0.0, api_client=client)
        then = time.time() - seconds_ago
        metrics = {"reward/mean": 0.25, "kl/mean": 0.001, "response_length/mean": 3.5}
        sink.update(trainer_status(progress(3, 5000, None, 0.25, then), metrics, []), force=True)
        status = self.kubectl.json("get", "rlhfjob", job, namespace=self.namespace)["status"]
        assert status["progress"]["step"] == 3, status

    def set_rayjob_status(self, name: str, **status: str) -> None:
        """What KubeRay does: a write to the RayJob's status subresource."""
        eventually(lambda: self.exists("rayjob", name), 30, f"RayJob {name}")
        patch = yaml.safe_dump({"status": status})
        self.kubectl(
            "patch",
            "rayjob",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            patch,
            namespace=self.namespace,
        )

    def exists(self, kind: str, name: str) -> bool:
        return self.kubectl("get", kind, name, namespace=self.namespace, check=False).returncode == 0

    def wait_phase(self, job: str, phase: str) -> None:
        def current() -> str | None:
            try:
                body = self.kubectl.json("get", "rlhfjob", job, namespace=self.namespace)
            except KubectlError:
                return None
            return (body.get("status") or {}).get("phase")

        eventually(lambda: current() == phase, 30, f"{job} to reach phase {phase}")
