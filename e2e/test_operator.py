"""The operator against the real control plane, as a subprocess (`rlhf operator`) that holds exactly
the chart's RBAC (helm template --show-only templates/rbac.yaml, bound to its own ServiceAccount).

No kubelet runs here, so the tests play KubeRay: they write RayJob status as KubeRay writes it
(status subresource, as admin). Their RayJobs carry spec.managedBy kueue.x-k8s.io/multikueue
(RLHF_OPERATOR_RAYJOB_MANAGED_BY) so that a KubeRay controller another test started in this control
plane leaves them alone. The last test runs the real KubeRay operator on an unmarked RayJob.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_kube import ControlPlane, Kubectl, free_port
from e2e_kube import eventually as poll_until
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
IMAGE = "registry.example/rlhf-trainer:e2e"
MULTIKUEUE = "kueue.x-k8s.io/multikueue"
MERGE = "application/merge-patch+json"
PHASE_LATENCY_LIMIT_S = 2.0
LATENCIES: list[tuple[str, float]] = []


# --------------------------------------------------------------------------------------------
# helpers


# Poll every 50 ms: the phase latencies these tests measure are around 100 ms.
eventually = functools.partial(poll_until, interval=0.05)


def example(stem: str, name: str, **spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / f"{stem}.yaml").read_text())
    doc["metadata"] = {"name": name}
    doc["spec"].update(spec)
    return doc


class Api:
    """Fast reads and writes as admin (kubectl is too slow to time sub-second reactions)."""

    def __init__(self, kubeconfig: Path):
        self.custom = k8s_client.CustomObjectsApi(
            k8s_config.new_client_from_config(config_file=str(kubeconfig))
        )

    def job(self, namespace: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object("rlhf.io", "v1alpha1", namespace, "rlhfjobs", name)

    def rayjobs(self, namespace: str) -> list[dict[str, Any]]:
        listed = self.custom.list_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs")
        return sorted(listed["items"], key=lambda r: r["metadata"]["name"])

    def rayjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def set_rayjob_status(self, namespace: str, name: str, **status: Any) -> None:
        """What KubeRay does: a write to the RayJob's status subresource."""
        self.custom.patch_namespaced_custom_object_status(
            "ray.io", "v1", namespace, "rayjobs", name, {"status": status}, _content_type=MERGE
        )

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            "rlhf.io", "v1alpha1", namespace, "rlhfjobs", name, patch, _content_type=MERGE
        )

    def phase(self, namespace: str, name: str) -> str | None:
        return (self.job(namespace, name).get("status") or {}).get("phase")

    def wait_phase(self, namespace: str, name: str, phase: str, timeout: float = 10.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            job = self.job(namespace, name)
            return job if (job.get("status") or {}).get("phase") == phase else None

        try:
            return eventually(reached, timeout, f"{name} to reach phase {phase}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; status now: {self.job(namespace, name).get('status')}") from None

    def timed_phase(
        self, label: str, namespace: str, name: str, phase: str, change: Callable[[], None]
    ) -> float:
        """Seconds from a RayJob status write to the RLHFJob showing `phase`."""
        started = time.monotonic()
        change()
        self.wait_phase(namespace, name, phase, timeout=15)
        latency = time.monotonic() - started
        LATENCIES.append((label, latency))
        print(f"[latency] {label}: {latency * 1000:.0f} ms")
        return latency


@dataclass
class OperatorProcess:
    proc: subprocess.Popen
    log_path: Path
    metrics_port: int
    liveness_port: int
    limited: bool = False  # runs with less than the chart's RBAC

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as resp:
            return resp.read().decode()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> Api:
    return Api(kubeconfig)


class Operators:
    """Runs `rlhf operator` subprocesses as one ServiceAccount that holds the chart's ClusterRole."""

    def __init__(self, control_plane: ControlPlane, kubectl: Kubectl, home: str, workdir: Path):
        self.kubectl = kubectl
        self.workdir = workdir
        self.started: list[OperatorProcess] = []
        self.release = f"op{secrets.token_hex(3)}"
        rendered = subprocess.run(
            [str(control_plane.bin("helm")), "template", self.release, str(REPO / "helm" / "rlhf-operator"),
             "--show-only", "templates/rbac.yaml", "--namespace", home],
            capture_output=True, text=True, check=True, env=control_plane.env,
        ).stdout  # fmt: skip
        docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
        assert [doc["kind"] for doc in docs] == ["ClusterRole", "ClusterRoleBinding"]
        assert "*" not in json.dumps(docs), "the chart's RBAC must not use wildcards"
        self.rules = docs[0]["rules"]
        self.control_plane, self.home = control_plane, home
        kubectl.apply(rendered)
        self.account = f"{self.release}-rlhf-operator"
        self.kubeconfig = self.account_kubeconfig(self.account)
        self.limited: list[str] = []

    def account_kubeconfig(self, account: str) -> Path:
        """A kubeconfig of a new ServiceAccount `account` in the home namespace."""
        self.kubectl("create", "serviceaccount", account, namespace=self.home)
        token = self.kubectl("create", "token", account, "--duration=2h", namespace=self.home).stdout.strip()
        path = self.workdir / f"kubeconfig-{account}"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "e2e", "cluster": {"server": self.control_plane.server,
                                                      "certificate-authority": str(self.control_plane.ca_file)}}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "e2e", "user": account, "namespace": self.home}}],
        }))  # fmt: skip
        return path

    def limited_kubeconfig(self, resource: str, verb: str) -> Path:
        """An identity with the chart's rules less one verb on one resource ("group/resource"): the
        operator blocks, retrying, at the first call that needs it, a point a test can kill it at.
        It may escalate/bind Roles, so creating the trainer's Role does not need that verb."""
        group, _, plural = resource.partition("/")
        rules = []
        for rule in self.rules:
            if group in rule["apiGroups"] and plural in rule["resources"]:
                rest = [r for r in rule["resources"] if r != plural]
                if rest:
                    rules.append({**rule, "resources": rest})
                rules.append({"apiGroups": [group], "resources": [plural],
                              "verbs": [v for v in rule["verbs"] if v != verb]})  # fmt: skip
            else:
                rules.append(rule)
        rules.append(
            {
                "apiGroups": ["rbac.authorization.k8s.io"],
                "resources": ["roles"],
                "verbs": ["escalate", "bind"],
            }
        )
        name = f"{self.release}-no-{verb}-{plural.replace('/', '-')}"
        self.limited.append(name)
        self.kubectl.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                            "metadata": {"name": name}, "rules": rules})  # fmt: skip
        self.kubectl("create", "clusterrolebinding", name, f"--clusterrole={name}",
                     f"--serviceaccount={self.home}:{name}")  # fmt: skip
        return self.account_kubeconfig(name)

    def start(
        self,
        namespace: str,
        wait: bool = True,
        managed_by: str | None = MULTIKUEUE,
        kubeconfig: Path | None = None,
        **env: str,
    ):
        """An operator watching `namespace` (a name or a glob); `kubeconfig`: another identity."""
        metrics_port, liveness_port = free_port(), free_port()
        log_path = self.workdir / f"operator-{len(self.started)}.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_OPERATOR_")}
        environment.update(
            KUBECONFIG=str(kubeconfig or self.kubeconfig), RLHF_OPERATOR_RESYNC_SECONDS="2", **env
        )
        if managed_by:
            environment["RLHF_OPERATOR_RAYJOB_MANAGED_BY"] = managed_by
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "rlhf_trainer.cli", "operator", "--namespace", namespace,
                 "--metrics-port", str(metrics_port), "--liveness-port", str(liveness_port),
                 "--trainer-image", IMAGE],
                stdout=out, stderr=subprocess.STDOUT, env=environment, cwd=REPO,
            )  # fmt: skip
        operator = OperatorProcess(
            proc, log_path, metrics_port, liveness_port, limited=kubeconfig is not None
        )
        self.started.append(operator)
        if wait:
            eventually(lambda: operator.healthy() or proc.poll() is not None, 60, "the operator's /healthz")
            assert proc.poll() is None, f"the operator exited:\n{operator.log()}"
        return operator

    def close(self) -> None:
        for operator in self.started:
            operator.stop()
        for name in [f"{self.release}-rlhf-operator", *self.limited]:
            self.kubectl("delete", "clusterrolebinding,clusterrole", name, "--ignore-not-found", check=False)
        for operator in self.started:
            if operator.limited:
                continue  # denied calls were the point
            errors = [
                line for line in operator.log().splitlines() if "Traceback" in line or "Forbidden" in line
            ]
            assert not errors, f"operator log has errors:\n{operator.log()[-4000:]}"


PREFIX = f"rlhfop-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def operators(control_plane: ControlPlane, kubectl: Kubectl, tmp_path_factory) -> Iterator[Operators]:
    home = f"{PREFIX}-home"
    kubectl("create", "namespace", home)
    operators = Operators(control_plane, kubectl, home, tmp_path_factory.mktemp("operators"))
    yield operators
    operators.close()
    kubectl("delete", "namespace", home, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def shared_operator(operators: Operators) -> OperatorProcess:
    """One operator for most tests: it watches every namespace named {PREFIX}-*."""
    return operators.start(f"{PREFIX}-*")


@pytest.fixture
def job_namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace the shared operator watches."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower().removeprefix("test_"))
    name = f"{PREFIX}-{base[:40].strip('-')}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="module", autouse=True)
def latency_report() -> Iterator[None]:
    """Writes the measured RayJob status -> RLHFJob phase latencies to .cache/e2e/operator-latency.json."""
    yield
    if LATENCIES:
        out = REPO / ".cache" / "e2e" / "operator-latency.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps([{"phase": label, "seconds": round(s, 4)} for label, s in LATENCIES], indent=2)
        )


def sample(metrics_text: str, name: str, **labels: str) -> float | None:
    """The value of one series in a Prometheus exposition, or None."""
    for family in text_string_to_metric_families(metrics_text):
        for point in family.samples:
            if point.name == name and all(point.labels.get(k) == v for k, v in labels.items()):
                return point.value
    return None


def rayjob_names(api: Api, namespace: str) -> list[str]:
    return [r["metadata"]["name"] for r in api.rayjobs(namespace)]


def condition(job: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in job["status"]["conditions"] if c["type"] == kind)


def trainer_config(kubectl: Kubectl, namespace: str, job: str) -> dict[str, Any]:
    config_map = kubectl.json("get", "configmap", f"{job}-trainer-config", namespace=namespace)
    return yaml.safe_load(config_map["data"]["trainer.yaml"])


def status_sink(make_sa_kubeconfig, namespace: str, job: str):
    """The trainer's status sink, authenticated as the trainer's ServiceAccount (the operator made it)."""
    from rlhf_trainer.telemetry.sinks import KubernetesStatusSink

    kubeconfig = make_sa_kubeconfig(namespace, f"{job}-trainer", create=False)
    return KubernetesStatusSink(
        namespace,
        job,
        min_interval_s=0.0,
        api_client=k8s_config.new_client_from_config(config_file=str(kubeconfig)),
    )


# --------------------------------------------------------------------------------------------
# tests


def test_job_gets_owned_children_and_a_rayjob_of_the_rendered_shape(
    shared_operator, api, kubectl, job_namespace
):
    namespace = job_namespace
    from rlhf_operator.render import RenderOptions, render_job_objects
    from rlhf_trainer.api.validation import validate_manifest

    kubectl.apply(example("grpo-qwen2.5-7b-math", "shape"), namespace=namespace)
    rayjob = eventually(lambda: api.rayjob(namespace, "shape-a0"), 15, "RayJob shape-a0")
    job = api.wait_phase(namespace, "shape", "Pending")
    uid = job["metadata"]["uid"]
    assert job["status"]["attempt"] == 0
    assert job["status"]["rayJob"] == {"name": "shape-a0"}
    assert job["status"]["observedGeneration"] == job["metadata"]["generation"]

    parsed, errors = validate_manifest({k: job[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    assert not errors
    expected = render_job_objects(parsed, RenderOptions(default_image=IMAGE, rayjob_managed_by=MULTIKUEUE))
    for want in expected:
        kind, name = want["kind"], want["metadata"]["name"]
        live = kubectl.json(
            "get",
            f"{kind.lower()}.{want['apiVersion'].split('/')[0]}"
            if "/" in want["apiVersion"]
            else kind.lower(),
            name,
            namespace=namespace,
        )
        assert live["metadata"]["labels"]["rlhf.io/job"] == "shape"
        assert live["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "rlhf.io/v1alpha1",
                "kind": "RLHFJob",
                "name": "shape",
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        for field in ("data", "rules", "roleRef", "subjects"):
            if field in want:
                assert live[field] == want[field], f"{kind} {name}: {field}"
    # The RayJob is stored as rendered (the API server's defaults come on top).
    assert_subset(expected[-1]["spec"], rayjob["spec"])
    workers = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert [(g["groupName"], g["replicas"]) for g in workers] == [("gpu8", 1)]
    assert workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 8}


def assert_subset(want: Any, got: Any, path: str = "spec") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{path}: {got!r}"
        for key, value in want.items():
            assert key in got, f"{path}.{key} missing"
            assert_subset(value, got[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: {got!r}"
        for index, (a, b) in enumerate(zip(want, got, strict=True)):
            assert_subset(a, b, f"{path}[{index}]")
    else:
        assert want == got or str(want) == str(got), f"{path}: want {want!r}, got {got!r}"


def test_rayjob_status_drives_phase_conditions_and_events(shared_operator, api, kubectl, job_namespace):
    namespace = job_namespace
    operator = shared_operator
    kubectl.apply(example("grpo-qwen2.5-7b-math", "phases"), namespace=namespace)
    eventually(lambda: api.rayjob(namespace, "phases-a0"), 15, "RayJob phases-a0")
    api.wait_phase(namespace, "phases", "Pending")

    api.timed_phase(
        "Initializing",
        namespace,
        "phases",
        "Initializing",
        lambda: api.set_rayjob_status(
            namespace,
            "phases-a0",
            jobDeploymentStatus="Initializing",
            rayClusterName="phases-a0-x7k2p",
            jobId="phases-a0-abcde",
        ),
    )
    latency = api.timed_phase(
        "Running",
        namespace,
        "phases",
        "Running",
        lambda: api.set_rayjob_status(
            namespace,
            "phases-a0",
            jobDeploymentStatus="Running",
            jobStatus="RUNNING",
            dashboardURL="phases-a0-x7k2p-head-svc.ns.svc.cluster.local:8265",
        ),
    )
    assert latency < PHASE_LATENCY_LIMIT_S
    job = api.job(namespace, "phases")
    assert job["status"]["rayJob"] == {
        "name": "phases-a0",
        "jobStatus": "RUNNING",
        "deploymentStatus": "Running",
        "rayClusterName": "phases-a0-x7k2p",
        "dashboardURL": "phases-a0-x7k2p-head-svc.ns.svc.cluster.local:8265",
        "jobId": "phases-a0-abcde",
    }
    assert (condition(job, "RayClusterReady")["status"], condition(job, "Running")["status"]) == (
        "True",
        "True",
    )
    assert job["status"]["startTime"]

    api.timed_phase(
        "Succeeded",
        namespace,
        "phases",
        "Succeeded",
        lambda: api.set_rayjob_status(
            namespace,
            "phases-a0",
            jobDeploymentStatus="Complete",
            jobStatus="SUCCEEDED",
            endTime="2025-03-01T12:00:00Z",
        ),
    )
    job = api.job(namespace, "phases")
    assert job["status"]["completionTime"] == "2025-03-01T12:00:00Z"
    assert condition(job, "Succeeded")["status"] == "True"

    def reasons() -> list[str]:
        events = kubectl.json(
            "get", "events", "--field-selector", "involvedObject.name=phases", namespace=namespace
        )
        return [
            e["reason"] for e in sorted(events["items"], key=lambda e: e["metadata"]["creationTimestamp"])
        ]

    eventually(
        lambda: {"Pending", "Initializing", "Running", "Succeeded"} <= set(reasons()), 10, "phase events"
    )
    labels = {"namespace": namespace, "job": "phases", "algorithm": "grpo"}
    eventually(
        lambda: sample(operator.metrics(), "rlhf_job_info", **labels, phase="Succeeded") == 1.0,
        10,
        "rlhf_job_info to show Succeeded",
    )
    metrics = operator.metrics()
    assert sample(metrics, "rlhf_job_info", **labels, phase="Running") is None
    assert sample(metrics, "rlhf_operator_jobs", phase="Succeeded") >= 1.0


def test_failed_attempt_restarts_from_the_latest_checkpoint_then_fails(
    shared_operator, api, kubectl, job_namespace, make_sa_kubeconfig
):
    namespace = job_namespace
    operator = shared_operator
    kubectl.apply(example("grpo-qwen2.5-7b-math", "retry", backoffLimit=1), namespace=namespace)
    eventually(lambda: api.rayjob(namespace, "retry-a0"), 15, "RayJob retry-a0")
    api.set_rayjob_status(namespace, "retry-a0", jobDeploymentStatus="Running", jobStatus="RUNNING")
    api.wait_phase(namespace, "retry", "Running")
    # The trainer saves a checkpoint and says so in the status, with its own ServiceAccount.
    sink = status_sink(make_sa_kubeconfig, namespace, "retry")
    checkpoint = {"step": 50, "path": "/checkpoints/step-50", "time": "2025-03-01T11:00:00Z"}
    sink.update({"latestCheckpoint": checkpoint, "checkpoints": [checkpoint]}, force=True)
    assert api.job(namespace, "retry")["status"]["latestCheckpoint"] == checkpoint

    api.timed_phase(
        "Retrying",
        namespace,
        "retry",
        "Retrying",
        lambda: api.set_rayjob_status(
            namespace,
            "retry-a0",
            jobDeploymentStatus="Failed",
            jobStatus="FAILED",
            reason="AppFailed",
            message="Job entrypoint command failed with exit code 1",
        ),
    )
    job = api.job(namespace, "retry")
    assert job["status"]["attempt"] == 1
    assert job["status"]["rayJob"]["name"] == "retry-a1"
    assert "exit code 1" in job["status"]["message"]
    assert eventually(lambda: rayjob_names(api, namespace) == ["retry-a0", "retry-a1"], 10, "RayJob retry-a1")
    config = trainer_config(kubectl, namespace, "retry")
    assert (config["attempt"], config["resumeFrom"]) == (1, "/checkpoints/step-50")
    assert api.job(namespace, "retry")["status"]["latestCheckpoint"] == checkpoint  # the trainer's, untouched

    api.set_rayjob_status(namespace, "retry-a1", jobDeploymentStatus="Running", jobStatus="RUNNING")
    api.wait_phase(namespace, "retry", "Running")
    api.set_rayjob_status(
        namespace,
        "retry-a1",
        jobDeploymentStatus="Failed",
        jobStatus="FAILED",
        reason="AppFailed",
        message="Job entrypoint command failed with exit code 2",
    )
    job = api.wait_phase(namespace, "retry", "Failed")
    assert job["status"]["message"] == "AppFailed: Job entrypoint command failed with exit code 2"
    failed = condition(job, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "AppFailed")
    time.sleep(2.5)  # a resync later: still two RayJobs, nothing restarted
    assert rayjob_names(api, namespace) == ["retry-a0", "retry-a1"]
    assert sample(operator.metrics(), "rlhf_operator_restarts_total", namespace=namespace, job="retry") == 1.0


def test_suspend_and_resume(shared_operator, api, kubectl, job_namespace, make_sa_kubeconfig):
    namespace = job_namespace
    kubectl.apply(example("grpo-qwen2.5-7b-math", "pause"), namespace=namespace)
    eventually(lambda: api.rayjob(namespace, "pause-a0"), 15, "RayJob pause-a0")
    api.set_rayjob_status(namespace, "pause-a0", jobDeploymentStatus="Running", jobStatus="RUNNING")
    api.wait_phase(namespace, "pause", "Running")
    checkpoint = {"step": 20, "path": "/checkpoints/step-20"}
    status_sink(make_sa_kubeconfig, namespace, "pause").update({"latestCheckpoint": checkpoint}, force=True)

    api.patch_job(namespace, "pause", {"spec": {"suspend": True}})
    eventually(
        lambda: api.rayjob(namespace, "pause-a0")["spec"]["suspend"] is True, 10, "RayJob suspend: true"
    )
    api.timed_phase(
        "Suspended",
        namespace,
        "pause",
        "Suspended",
        lambda: api.set_rayjob_status(
            namespace, "pause-a0", jobDeploymentStatus="Suspended", jobStatus="", rayClusterName=""
        ),
    )
    assert condition(api.job(namespace, "pause"), "Suspended")["status"] == "True"

    api.patch_job(namespace, "pause", {"spec": {"suspend": False}})
    eventually(
        lambda: api.rayjob(namespace, "pause-a0")["spec"]["suspend"] is False, 10, "RayJob suspend: false"
    )
    assert trainer_config(kubectl, namespace, "pause")["resumeFrom"] == "/checkpoints/step-20"
    api.set_rayjob_status(namespace, "pause-a0", jobDeploymentStatus="Running", jobStatus="RUNNING")
    job = api.wait_phase(namespace, "pause", "Running")
    assert condition(job, "Suspended")["status"] == "False"
    assert rayjob_names(api, namespace) == ["pause-a0"]


def test_spec_edit_that_cannot_apply_in_place_is_refused(shared_operator, api, kubectl, job_namespace):
    namespace = job_namespace
    kubectl.apply(example("grpo-qwen2.5-7b-math", "edit"), namespace=namespace)
    eventually(lambda: api.rayjob(namespace, "edit-a0"), 15, "RayJob edit-a0")
    before = api.rayjob(namespace, "edit-a0")
    api.patch_job(
        namespace, "edit", {"spec": {"training": {"maxSteps": 900}, "models": {"actor": {"zeroStage": 2}}}}
    )

    def refused_job() -> dict[str, Any] | None:
        job = api.job(namespace, "edit")
        kinds = [c["type"] for c in (job.get("status") or {}).get("conditions", [])]
        return job if "SpecChangeRefused" in kinds else None

    job = eventually(refused_job, 10, "SpecChangeRefused")
    refused = condition(job, "SpecChangeRefused")
    assert (refused["status"], refused["reason"]) == ("True", "NotInPlace")
    assert refused["message"].startswith("spec.models.actor.zeroStage, spec.training.maxSteps: cannot change")
    assert job["status"]["observedGeneration"] == job["metadata"]["generation"] == 2
    after = api.rayjob(namespace, "edit-a0")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert trainer_config(kubectl, namespace, "edit")["spec"]["training"]["maxSteps"] == 500


def test_deleting_a_job_deletes_its_children_and_its_metrics(shared_operator, api, kubectl, job_namespace):
    namespace = job_namespace
    kubectl.apply(example("grpo-qwen2.5-7b-math", "gone"), namespace=namespace)
    eventually(lambda: api.rayjob(namespace, "gone-a0"), 15, "RayJob gone-a0")
    kinds = "configmap,serviceaccount,role.rbac.authorization.k8s.io,rolebinding.rbac.authorization.k8s.io"

    def children() -> list[str]:
        listed = kubectl.json("get", f"{kinds},rayjobs.ray.io", "-l", "rlhf.io/job=gone", namespace=namespace)
        return [f"{o['kind']}/{o['metadata']['name']}" for o in listed["items"]]

    assert sorted(children()) == [
        "ConfigMap/gone-trainer-config",
        "RayJob/gone-a0",
        "Role/gone-trainer",
        "RoleBinding/gone-trainer",
        "ServiceAccount/gone-trainer",
    ]
    labels = {"namespace": namespace, "job": "gone"}
    eventually(
        lambda: sample(shared_operator.metrics(), "rlhf_job_info", **labels, phase="Pending"), 10, "metrics"
    )
    kubectl("delete", "rlhfjob", "gone", "--wait=true", "--timeout=30s", namespace=namespace)
    eventually(lambda: children() == [], 60, "the garbage collector to delete the children", interval=0.5)
    # The job's series go with it.
    eventually(
        lambda: f'namespace="{namespace}"' not in shared_operator.metrics(), 10, "the job's series to go"
    )


def test_operator_killed_mid_reconcile_never_duplicates_or_loses_a_rayjob(operators, api, kubectl, namespace):
    # Each kill point is reached by an operator whose identity lacks the one permission the next
    # step needs: it does everything before that step, then retries it (a 403 from RBAC is the
    # operator's configuration, never the job's fault) until it is killed there.
    # 1. Killed right after creating the first RayJob, before writing the status.
    first = operators.start(
        namespace, kubeconfig=operators.limited_kubeconfig("rlhf.io/rlhfjobs/status", "patch")
    )
    kubectl.apply(example("grpo-qwen2.5-7b-math", "crash", backoffLimit=2), namespace=namespace)
    eventually(lambda: rayjob_names(api, namespace) == ["crash-a0"], 30, "RayJob crash-a0")
    eventually(lambda: "Forbidden" in first.log(), 30, "the operator to be denied the status write")
    first.kill()
    assert rayjob_names(api, namespace) == ["crash-a0"]
    assert "phase" not in (api.job(namespace, "crash").get("status") or {})
    second = operators.start(namespace, kubeconfig=operators.limited_kubeconfig("ray.io/rayjobs", "create"))
    job = api.wait_phase(namespace, "crash", "Pending")
    assert job["status"]["rayJob"]["name"] == "crash-a0"
    assert rayjob_names(api, namespace) == ["crash-a0"]

    # 2. Killed during a restart: the ConfigMap for attempt 1 is written, its RayJob is not created yet.
    api.set_rayjob_status(
        namespace, "crash-a0", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed"
    )
    eventually(lambda: trainer_config(kubectl, namespace, "crash")["attempt"] == 1, 30, "attempt 1's config")
    eventually(lambda: "Forbidden" in second.log(), 30, "the operator to be denied the RayJob")
    second.kill()
    assert rayjob_names(api, namespace) == ["crash-a0"]
    assert api.job(namespace, "crash")["status"]["attempt"] == 0
    operators.start(namespace)
    job = api.wait_phase(namespace, "crash", "Retrying")
    assert job["status"]["attempt"] == 1
    eventually(lambda: rayjob_names(api, namespace) == ["crash-a0", "crash-a1"], 10, "RayJob crash-a1")
    time.sleep(2.5)  # a resync later: still exactly one RayJob per attempt
    assert rayjob_names(api, namespace) == ["crash-a0", "crash-a1"]


def test_trainer_and_operator_status_writes_keep_each_others_fields(
    shared_operator, api, kubectl, job_namespace, make_sa_kubeconfig
):
    namespace = job_namespace
    kubectl.apply(example("grpo-qwen2.5-7b-math", "both"), namespace=namespace)
    eventually(lambda: api.rayjob(namespace, "both-a0"), 15, "RayJob both-a0")
    api.wait_phase(namespace, "both", "Pending")
    sink = status_sink(make_sa_kubeconfig, namespace, "both")
    steps = 40
    stop = threading.Event()

    def train() -> None:
        for step in range(1, steps + 1):
            sink.update(
                {
                    "progress": {
                        "step": step,
                        "totalSteps": steps,
                        "percent": 100.0 * step / steps,
                        "summary": f"{step}/{steps}",
                        "updatedAt": "2025-03-01T12:00:00Z",
                    },
                    "metrics": {"reward/mean": step / steps},
                },
                force=True,
            )
            time.sleep(0.02)
        stop.set()

    trainer = threading.Thread(target=train)
    trainer.start()
    states = [("Initializing", ""), ("Running", "RUNNING")] * 5
    for deployment, job_status in states:
        api.set_rayjob_status(namespace, "both-a0", jobDeploymentStatus=deployment, jobStatus=job_status)
        time.sleep(0.05)
    trainer.join(30)
    job = api.wait_phase(namespace, "both", "Running")
    assert job["status"]["progress"]["step"] == steps
    assert job["status"]["metrics"] == {"reward/mean": 1.0}
    assert condition(job, "Running")["status"] == "True"
    assert job["status"]["rayJob"]["jobStatus"] == "RUNNING"
    # Who owns which status field, as the API server recorded it. The CRD defaults the trainer's
    # metrics ({}) and checkpoints ([]) when the operator first writes the status, so the operator's
    # manager may hold those empty containers, never anything inside them.
    managed = kubectl.json("get", "rlhfjob", "both", "--show-managed-fields", namespace=namespace)
    for entry in managed["metadata"]["managedFields"]:
        status_fields = (entry.get("fieldsV1") or {}).get("f:status", {})
        if entry["manager"] == "rlhf-operator":
            assert "f:phase" in status_fields
            assert "f:progress" not in status_fields and "f:latestCheckpoint" not in status_fields
            assert status_fields.get("f:metrics", {}) in ({}, {".": {}}), status_fields["f:metrics"]
        assert not (entry["manager"].startswith("kopf") and status_fields), "kopf wrote to the status"


def test_a_job_that_cannot_be_placed_fails_with_the_reason_and_is_not_retried(
    shared_operator, api, kubectl, job_namespace
):
    namespace = job_namespace
    operator = shared_operator
    doc = example("grpo-qwen2.5-7b-math", "unplaceable")
    doc["spec"]["models"]["actor"]["gpus"] = 12  # valid by the schema, but not a multiple of gpusPerPod 8
    doc["spec"]["training"].update(rolloutBatchSize=96, trainBatchSize=96)  # batches 12 workers can split
    kubectl.apply(doc, namespace=namespace)
    job = api.wait_phase(namespace, "unplaceable", "Failed")
    assert job["status"]["message"].startswith(
        "RenderFailed: spec.models.actor.gpus: 12 GPUs cannot be placed"
    )
    assert condition(job, "Failed")["reason"] == "RenderFailed"
    time.sleep(3)  # resyncs come and go
    assert rayjob_names(api, namespace) == []
    assert operator.log().count("RenderFailed") <= 2, operator.log()[-3000:]  # kopf gave up: no retry loop


# RLHFJob examples (the pipelines' stages are rendered in test_pipeline.py).
@pytest.mark.parametrize(
    "stem", [p.stem for p in sorted(EXAMPLES.glob("*.yaml")) if "kind: RLHFPipeline" not in p.read_text()]
)
def test_rendered_rayjobs_pass_the_kuberay_crd_schema(stem, kubectl, namespace):
    from rlhf_operator.render import RenderOptions, render_job_objects
    from rlhf_trainer.api.validation import validate_manifest

    doc = yaml.safe_load((EXAMPLES / f"{stem}.yaml").read_text())
    doc["metadata"]["namespace"] = namespace
    doc["metadata"]["uid"] = "2f1f6f1e-0000-4000-8000-000000000000"
    job, errors = validate_manifest(doc)
    assert not errors
    objects = render_job_objects(job, RenderOptions(default_image=IMAGE))
    for obj in objects:
        obj["metadata"].pop("ownerReferences")  # the owner does not exist; the GC would delete them
    manifest = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objects})
    # Strict: a field the CRD does not know is an error, not a silently pruned warning.
    proc = kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-f",
        "-",
        input=manifest,
        namespace=namespace,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr


def test_kuberay_makes_a_raycluster_requesting_the_jobs_gpus(
    kuberay_operator, operators, api, kubectl, namespace
):
    operators.start(namespace, managed_by=None)
    doc = example("ppo-llama3-8b", "ppo")
    del doc["spec"]["queueName"]  # a queued RayJob waits for Kueue (e2e/test_kueue.py), none runs here
    kubectl.apply(doc, namespace=namespace)
    eventually(lambda: api.rayjob(namespace, "ppo-a0"), 15, "RayJob ppo-a0")

    def raycluster() -> dict[str, Any] | None:
        items = kubectl.json("get", "rayclusters.ray.io", namespace=namespace)["items"]
        return items[0] if items else None

    cluster = eventually(raycluster, 90, "KubeRay to create the RayCluster", interval=0.5)
    assert cluster["metadata"]["name"].startswith("ppo-a0-")
    gpus = sum(
        int(group["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
        * group["replicas"]
        for group in cluster["spec"]["workerGroupSpecs"]
    )
    assert gpus == 4 + 4 + 2 + 2 + 4  # actor + critic + reference + reward model + 4 vLLM engines
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(head["containers"][0].get("resources", {}))
    job = api.wait_phase(namespace, "ppo", "Initializing", timeout=60)
    assert job["status"]["rayJob"]["rayClusterName"] == cluster["metadata"]["name"]


@pytest.mark.parametrize("cause", ["unschedulable", "image-pull", "admission"])
def test_stuck_pods(shared_operator, api, kubectl, kubeconfig, job_namespace, cause):
    """Pods that cannot start are reported (StartupBlocked, an event) and fail the job at its
    pre-running deadline. (A short name: the namespace is named after the test and its cause.)"""
    from startup_scenario import EXPECTED_REASON, run_startup_scenario

    namespace = job_namespace
    kubectl.apply(example("grpo-qwen2.5-7b-math", "stuck", preRunningDeadlineSeconds=15), namespace=namespace)
    client = k8s_config.new_client_from_config(config_file=str(kubeconfig))
    final = run_startup_scenario(client, namespace, "stuck", cause, condition_timeout=60, deadline_timeout=60)
    print(f"[startup] {cause}: StartupBlocked after {final['status']['seconds_to_condition']} s")
    reasons = [e["reason"] for e in kubectl.json("get", "events", namespace=namespace)["items"]]
    assert EXPECTED_REASON[cause] in reasons and "Failed" in reasons, reasons
    assert reasons.count(EXPECTED_REASON[cause]) == 1, reasons  # once, not on every reconcile


def test_kuberay_pods_carry_the_jobs_labels_and_a_stuck_job_loses_its_cluster_at_the_deadline(
    kuberay_operator, operators, api, kubectl, kubeconfig, namespace
):
    """With the real KubeRay: its head pod carries rlhf.io/job (so the operator finds it), the
    scheduler's Unschedulable status on it becomes StartupBlocked, and at the pre-running deadline
    the suspended RayJob makes KubeRay delete the Ray cluster."""
    from startup_scenario import pod_status

    operators.start(namespace, managed_by=None)
    kubectl.apply(
        # No deadline until the cause is reported (KubeRay may take a while to make the pod here);
        # then a short one, applied in place.
        example("grpo-qwen2.5-7b-math", "kr-stuck", preRunningDeadlineSeconds=0),
        namespace=namespace,
    )
    core = k8s_client.CoreV1Api(k8s_config.new_client_from_config(config_file=str(kubeconfig)))
    selector = "rlhf.io/job=kr-stuck,rlhf.io/attempt=0,rlhf.io/role=head"

    def head_pod() -> Any:
        items = core.list_namespaced_pod(namespace, label_selector=selector).items
        return items[0] if items else None

    pod = eventually(head_pod, 90, "KubeRay to create the head pod", interval=0.5)

    def unschedulable() -> None:
        """The scheduler's verdict on the head pod, as a scheduler writes it (no scheduler runs here)."""
        current = head_pod()
        conditions = (current.status.conditions or []) if current is not None else []
        if current is not None and not any(c.reason == "Unschedulable" for c in conditions):
            # Again if an update raced the first write away (seen once in CI, cause not found).
            core.patch_namespaced_pod_status(
                current.metadata.name,
                namespace,
                {"status": pod_status("unschedulable", current.spec.containers[0].image)},
            )

    unschedulable()

    def blocked() -> dict[str, Any] | None:
        unschedulable()
        job = api.job(namespace, "kr-stuck")
        conds = {c["type"]: c for c in (job.get("status") or {}).get("conditions") or []}
        cond = conds.get("StartupBlocked")
        return cond if cond and cond["reason"] == "Unschedulable" else None

    cond = eventually(blocked, 30, "StartupBlocked=Unschedulable", interval=0.5)
    assert pod.metadata.name in cond["message"] and "Insufficient nvidia.com/gpu" in cond["message"]
    assert api.phase(namespace, "kr-stuck") == "Initializing"
    api.patch_job(namespace, "kr-stuck", {"spec": {"preRunningDeadlineSeconds": 5}})
    job = api.wait_phase(namespace, "kr-stuck", "Failed", timeout=60)
    assert condition(job, "Failed")["reason"] == "PreRunningDeadlineExceeded"

    def cluster_gone() -> bool:
        deployment = (api.rayjob(namespace, "kr-stuck-a0").get("status") or {}).get("jobDeploymentStatus")
        clusters = kubectl.json("get", "rayclusters.ray.io", namespace=namespace)["items"]
        return deployment == "Suspended" and not clusters

    eventually(cluster_gone, 90, "KubeRay to suspend the RayJob and delete its RayCluster", interval=0.5)


def test_kuberay_pods_refused_by_a_gpu_quota_are_reported(
    kuberay_operator, operators, api, kubectl, namespace
):
    """A ResourceQuota (real admission) refuses the GPU worker pods KubeRay creates: KubeRay's
    Warning event becomes StartupBlocked=AdmissionRefused with the server's message."""
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "no-gpus"},
            "spec": {"hard": {"requests.nvidia.com/gpu": "0"}},
        },
        namespace=namespace,
    )
    eventually(
        lambda: (
            kubectl.json("get", "resourcequota", "no-gpus", namespace=namespace).get("status", {}).get("hard")
        ),
        30,
        "the quota controller to fill in the quota's status",
        interval=0.5,
    )
    operators.start(namespace, managed_by=None)
    kubectl.apply(example("grpo-qwen2.5-7b-math", "kr-quota"), namespace=namespace)

    def refused() -> dict[str, Any] | None:
        conds = {
            c["type"]: c for c in (api.job(namespace, "kr-quota").get("status") or {}).get("conditions") or []
        }
        cond = conds.get("StartupBlocked")
        return cond if cond and cond["reason"] == "AdmissionRefused" else None

    cond = eventually(refused, 90, "StartupBlocked=AdmissionRefused", interval=0.5)
    assert "exceeded quota: no-gpus" in cond["message"], cond
    reasons = [e["reason"] for e in kubectl.json("get", "events", namespace=namespace)["items"]]
    assert "AdmissionRefused" in reasons, reasons
