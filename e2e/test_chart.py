"""The Helm chart against the real control plane: its rendering passes the API server's validation
(`kubectl apply --dry-run=server`), `helm install` creates it, and the operator reconciles a job
with the identity the chart gives it.

This control plane has no scheduler and no kubelet, so the chart's Deployment never gets a running
pod. The install test therefore runs the operator the way that pod would: `rlhf` with the
Deployment's own arguments (read back from the installed Deployment; only the ports are moved to
free loopback ports, and the watched namespace is the test's), as a local subprocess that
authenticates with a TokenRequest token of the chart-created ServiceAccount, so the chart's
RBAC (a Role in the watched namespace) is all it may do. The test then applies an RLHFJob and waits for its RayJob.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_kube import ControlPlane, Kubectl, KubectlError, eventually, free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "rlhf-operator"
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# RayJobs handed to MultiKueue are left alone by a KubeRay operator another test may run here.
MULTIKUEUE = "kueue.x-k8s.io/multikueue"


def helm(
    control_plane: ControlPlane, home: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess:
    env = {
        **control_plane.env,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    proc = subprocess.run(
        [str(control_plane.bin("helm")), *args], capture_output=True, text=True, env=env, timeout=180
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except OSError:
        return 0, ""


def tiny_job(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "examples" / "grpo-qwen2.5-7b-math.yaml").read_text())
    doc["metadata"] = {"name": name}
    return doc


def test_default_rendering_passes_server_side_validation(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    release = f"dry{secrets.token_hex(3)}"
    rendered = helm(control_plane, tmp_path, "template", release, str(CHART), "--namespace", namespace).stdout
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert {o["kind"] for o in objects} == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ConfigMap",
        "Pod",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    # The pods meet the "restricted" Pod Security Standard: enforced on the helm test Pod, warned
    # about for the Deployment's template (the PodSecurity admission plugin runs on dry runs too).
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/warn=restricted")  # fmt: skip
    applied = kubectl.apply(rendered, namespace=namespace, dry_run=True)
    assert applied.stdout.count("(server dry run)") == len(objects), applied.stdout
    assert "PodSecurity" not in applied.stderr, applied.stderr


def test_rendering_with_every_value_set_passes_server_side_validation(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    """Every switch and every pod-level value on. The Prometheus Operator's kinds are not in this
    cluster; they are left out here (their structure is tested in tests/chart, and their rules run
    on a real Prometheus in e2e/test_prometheus.py)."""
    team_b = kubectl.create_namespace("team-b")  # a watched namespace gets the operator's Role
    values = {
        "operator": {
            "watchNamespaces": [namespace, team_b],
            "peering": "rlhf",
            "logLevel": "debug",
            "extraArgs": ["--verbose"],
            "extraEnv": [{"name": "RLHF_OPERATOR_RESYNC_SECONDS", "value": "60"}],
            "trainerImage": {"repository": "registry.example/trainer", "tag": "v1"},
        },
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccount": {"annotations": {"team": "ml"}},
        "podAnnotations": {"a": "b"},
        "podLabels": {"c": "d"},
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}
                            ]
                        }
                    ]
                }
            }
        },
        "resources": {
            "requests": {"cpu": "200m", "memory": "300Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "RLHF"}},
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    release = f"all{secrets.token_hex(3)}"
    rendered = helm(
        control_plane,
        tmp_path,
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "-f",
        str(values_file),
    ).stdout
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert {o["kind"] for o in objects} & MONITORING_KINDS == MONITORING_KINDS
    assert sorted(o["metadata"]["namespace"] for o in objects if o["kind"] == "Role") == sorted(
        [namespace, team_b]
    )
    kept = [o for o in objects if o["kind"] not in MONITORING_KINDS]
    try:
        # Every namespaced object names its namespace (the Roles name the watched ones).
        out = kubectl.apply(yaml.safe_dump_all(kept), dry_run=True).stdout
    finally:
        kubectl.delete_namespace(team_b)
    assert out.count("(server dry run)") == len(kept), out


def test_chart_installs_and_its_service_account_runs_the_operator(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str, make_sa_kubeconfig, tmp_path: Path
) -> None:
    release = f"rlhf{secrets.token_hex(3)}"
    fullname = f"{release}-rlhf-operator"
    # --skip-crds: this control plane already has the CRD (e2e/cluster.py applies crds/, which the
    # chart's copy equals: tests/chart/test_chart_crds.py), and other tests' jobs live in it. Helm 4
    # would server-side apply crds/ over it and conflict with that field manager whenever the
    # generated CRD moved on between the cluster's start and now.
    installed = helm(
        control_plane,
        tmp_path,
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--skip-crds",
        "--set",
        f"operator.watchNamespaces={{{namespace}}}",
        "--set",
        "operator.trainerImage.repository=registry.example/trainer",
    )
    try:
        assert "STATUS: deployed" in installed.stdout, installed.stdout
        assert "helm test" in installed.stdout  # NOTES.txt
        # The chart's objects, as the API server holds them.
        deployment = kubectl.json("get", "deployment", fullname, namespace=namespace)
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
        kubectl("get", "serviceaccount", fullname, namespace=namespace)
        kubectl("get", "service", f"{fullname}-metrics", namespace=namespace)
        kubectl("get", "configmap", f"{fullname}-dashboard", namespace=namespace)
        kubectl("get", "clusterrole,clusterrolebinding", fullname)
        # watchNamespaces is set: the operator's job rules are a Role in that namespace only.
        kubectl("get", "role,rolebinding", fullname, namespace=namespace)
        kubectl("get", "crd", "rlhfjobs.rlhf.io")
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert pod["serviceAccountName"] == fullname

        # The policy ConfigMap as the pod mounts it: its file, where the container's env points.
        policy = kubectl.json("get", "configmap", f"{fullname}-policy", namespace=namespace)
        mounted = tmp_path / "policy-mount"
        mounted.mkdir()
        (mounted / "policy.yaml").write_text(policy["data"]["policy.yaml"])
        operator = run_deployment_command(
            container,
            make_sa_kubeconfig(namespace, fullname, create=False),
            tmp_path / "operator.log",
            mounts={"/etc/rlhf-operator": mounted},
        )
        try:
            healthz = f"http://127.0.0.1:{operator.liveness_port}/healthz"
            eventually(
                lambda: http_get(healthz)[0] == 200 or operator.proc.poll() is not None,
                60,
                "the operator's /healthz (the Deployment's liveness probe path)",
            )
            assert operator.proc.poll() is None, operator.log()

            kubectl.apply(tiny_job("via-chart"), namespace=namespace)
            rayjob = eventually(
                lambda: get_or_none(kubectl, "rayjob", "via-chart-a0", namespace), 30, "RayJob via-chart-a0"
            )
            assert rayjob["metadata"]["labels"]["rlhf.io/job"] == "via-chart"
            head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
            assert head["image"] == "registry.example/trainer:0.1.0"  # --trainer-image from the values
            job = eventually(
                lambda: (
                    (get_or_none(kubectl, "rlhfjob", "via-chart", namespace) or {})
                    .get("status", {})
                    .get("phase")
                ),
                30,
                "the job's phase",
            )
            assert job == "Pending"
            metrics = f"http://127.0.0.1:{operator.metrics_port}/metrics"
            eventually(lambda: 'job="via-chart"' in http_get(metrics)[1], 30, "rlhf_job_info of the job")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\noperator log:\n{operator.log()[-6000:]}") from None
        finally:
            operator.stop()
        log = operator.log()
        assert "Forbidden" not in log and "Traceback" not in log, log[-4000:]
    finally:
        helm(control_plane, tmp_path, "uninstall", release, "--namespace", namespace, check=False)
    # Uninstall removes what install created, the cluster-scoped RBAC included; the CRD stays.
    eventually(
        lambda: kubectl("get", "clusterrole", fullname, check=False).returncode != 0,
        30,
        "the ClusterRole to go",
    )
    kubectl("get", "crd", "rlhfjobs.rlhf.io")


def get_or_none(kubectl: Kubectl, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    try:
        return kubectl.json("get", kind, name, namespace=namespace)
    except KubectlError:
        return None


class LocalOperator:
    def __init__(self, proc: subprocess.Popen, log_path: Path, metrics_port: int, liveness_port: int):
        self.proc, self.log_path = proc, log_path
        self.metrics_port, self.liveness_port = metrics_port, liveness_port

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def run_deployment_command(
    container: dict[str, Any], kubeconfig: Path, log_path: Path, mounts: dict[str, Path] | None = None
) -> LocalOperator:
    """The container's command and arguments as a local process, ports moved to free ones.

    `mounts` maps the container's volume mount paths to local directories holding the same files;
    env values under a mount path point into them.
    """
    mounts = mounts or {}
    declared = {m["mountPath"] for m in container.get("volumeMounts", [])}
    assert set(mounts) <= declared, (mounts, declared)
    assert container["command"] == ["rlhf"]
    metrics_port, liveness_port = free_port(), free_port()
    args = []
    for arg in container["args"]:
        if arg.startswith("--metrics-port="):
            arg = f"--metrics-port={metrics_port}"
        elif arg.startswith("--liveness-port="):
            arg = f"--liveness-port={liveness_port}"
        args.append(arg)
    assert args[0] == "operator" and any(a.startswith("--namespace=") for a in args), args
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_OPERATOR_")}
    # The container's literal env, except HOME: /tmp there is the pod's emptyDir.
    env.update(
        {e["name"]: e["value"] for e in container.get("env", []) if "value" in e and e["name"] != "HOME"}
    )
    for name, value in list(env.items()):
        for mount_path, local in mounts.items():
            if value.startswith(mount_path + "/"):
                env[name] = str(local / value.removeprefix(mount_path + "/"))
    env.update(KUBECONFIG=str(kubeconfig), RLHF_OPERATOR_RAYJOB_MANAGED_BY=MULTIKUEUE)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlhf_trainer.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    return LocalOperator(proc, log_path, metrics_port, liveness_port)
