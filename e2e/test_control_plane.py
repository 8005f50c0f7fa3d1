"""The control plane is a real Kubernetes, and the RLHFJob CRD behaves on it as the API contract says:
examples apply, invalid manifests are rejected naming the field, explain and printer columns work,
the status subresource keeps every field and ignores spec, owned objects are garbage-collected."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cluster
import cluster_build
import pytest
import yaml
from e2e_kube import Kubectl

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
CRD_FILE = REPO / "crds" / "rlhfjobs.rlhf.io.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
INVALID = sorted((REPO / "tests" / "manifests" / "invalid").glob("*.yaml"))
TINY_JOB = REPO / "examples" / "tiny-grpo-cpu.yaml"


def manifest_docs(path: Path) -> list[dict]:
    """The objects in a manifest file, namespace dropped so the test's namespace applies."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        doc.get("metadata", {}).pop("namespace", None)
    return docs


def crd_schema() -> dict:
    crd = yaml.safe_load(CRD_FILE.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def create_tiny_job(kubectl: Kubectl, namespace: str, name: str = "tiny") -> dict:
    (job,) = manifest_docs(TINY_JOB)
    job["metadata"]["name"] = name
    kubectl.apply(job, namespace=namespace)
    return kubectl.json("get", "rlhfjob", name, namespace=namespace)


def assert_subset(applied: Any, stored: Any, path: str = "") -> None:
    """Every field the manifest set is stored with its value (nothing pruned or rewritten)."""
    if isinstance(applied, dict):
        assert isinstance(stored, dict), f"{path}: stored as {stored!r}"
        for key, value in applied.items():
            assert key in stored, f"{path}.{key} was pruned by the API server"
            assert_subset(value, stored[key], f"{path}.{key}")
    elif isinstance(applied, list):
        assert isinstance(stored, list) and len(stored) == len(applied), f"{path}: stored as {stored!r}"
        for i, (a, s) in enumerate(zip(applied, stored, strict=True)):
            assert_subset(a, s, f"{path}[{i}]")
    else:
        assert applied == stored, f"{path}: applied {applied!r}, stored {stored!r}"


def uncovered(schema: dict, value: Any, path: str) -> list[str]:
    """Schema properties that `value` does not set (recursing into objects and arrays of objects)."""
    missing = []
    if schema.get("type") == "array" and isinstance(value, list):
        for item in value[:1]:
            missing += uncovered(schema.get("items", {}), item, f"{path}[0]")
    for key, sub in schema.get("properties", {}).items():
        if not isinstance(value, dict) or key not in value:
            missing.append(f"{path}.{key}")
        else:
            missing += uncovered(sub, value[key], f"{path}.{key}")
    return missing


@pytest.fixture(scope="module")
def manifests_namespace(kubectl: Kubectl) -> str:
    """One namespace for the example and invalid-manifest tests (distinct names; saves ~100 calls)."""
    name = kubectl.create_namespace("manifests")
    yield name
    kubectl.delete_namespace(name)


def test_control_plane_is_real_kubernetes_at_the_pinned_version(kubectl: Kubectl) -> None:
    version = kubectl.json("version")["serverVersion"]["gitVersion"]
    assert version == cluster_build.KUBE.required_version("k8s.io/kubernetes")
    assert "readyz check passed" in kubectl("get", "--raw", "/readyz?verbose").stdout
    namespaces = {ns["metadata"]["name"] for ns in kubectl.json("get", "namespaces")["items"]}
    assert {"default", "kube-system", "kube-public"} <= namespaces
    crds = {c["metadata"]["name"] for c in kubectl.json("get", "crds")["items"]}
    assert {"rlhfjobs.rlhf.io", "rayjobs.ray.io", "rayclusters.ray.io", "rayservices.ray.io"} <= crds


def test_second_up_sees_the_running_cluster_and_returns_quickly(kubectl: Kubectl) -> None:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(Path(cluster.__file__)), "up"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "already up" in proc.stdout
    assert time.monotonic() - started < 10
    assert subprocess.run([sys.executable, str(Path(cluster.__file__)), "status"]).returncode == 0


def test_rbac_forbids_a_service_account_until_a_role_binds_it(kubectl, namespace, make_sa_kubeconfig) -> None:
    as_sa = Kubectl(kubectl.binary, make_sa_kubeconfig(namespace, "reader"))
    denied = as_sa("get", "configmaps", check=False)
    assert denied.returncode != 0
    assert f"system:serviceaccount:{namespace}:reader" in denied.stderr and "forbidden" in denied.stderr

    kubectl("create", "role", "read-cm", "--verb=get,list", "--resource=configmaps", namespace=namespace)
    kubectl(
        "create",
        "rolebinding",
        "read-cm",
        "--role=read-cm",
        f"--serviceaccount={namespace}:reader",
        namespace=namespace,
    )
    wait_for(lambda: as_sa("get", "configmaps", check=False).returncode == 0, 15, "the RoleBinding to apply")
    assert as_sa("get", "secrets", check=False).returncode != 0
    assert as_sa("get", "configmaps", namespace="default", check=False).returncode != 0


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_applies_and_is_stored_unpruned(
    example: Path, kubectl: Kubectl, manifests_namespace: str
) -> None:
    namespace = manifests_namespace
    for doc in manifest_docs(example):
        # kubectl apply validates strictly on the server: an unknown field fails here.
        kubectl.apply(doc, namespace=namespace, dry_run=True)
        kubectl.apply(doc, namespace=namespace)
        stored = kubectl.json("get", doc["kind"], doc["metadata"]["name"], namespace=namespace)
        assert_subset(doc.get("spec"), stored.get("spec"), "spec")


def test_every_example_and_invalid_manifest_is_collected() -> None:
    assert len(EXAMPLES) >= 1 and len(INVALID) >= 1


@pytest.mark.parametrize("manifest", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_manifest_is_rejected_naming_the_field(
    manifest: Path, kubectl: Kubectl, manifests_namespace: str
) -> None:
    text = manifest.read_text()
    match = re.fullmatch(r"#\s*expect:\s*(\S+)\s*", text.splitlines()[0])
    assert match, (
        f"{manifest.name}: first line must be '# expect: <field path>', got {text.splitlines()[0]!r}"
    )
    field_path = match.group(1)
    # The path must stand alone: expecting spec.models.reward is not met by spec.models.reward[0].x.
    named = re.compile(rf'(^|[\s"\'(]){re.escape(field_path)}($|[\s:,"\')])', re.MULTILINE)

    dry = kubectl.apply(text, namespace=manifests_namespace, dry_run=True, check=False)
    assert dry.returncode != 0, f"{manifest.name} was accepted by the API server"
    assert named.search(dry.stderr), f"error does not name {field_path}: {dry.stderr.strip()}"
    real = kubectl("create", "-f", "-", namespace=manifests_namespace, input=text, check=False)
    assert real.returncode != 0 and named.search(real.stderr), real.stderr


RULE_MISTAKES = """
apiVersion: rlhf.io/v1alpha1
kind: RLHFJob
metadata: {name: several-rule-mistakes}
spec:
  algorithm: {name: grpo, samplesPerPrompt: 4}
  models:
    actor: {model: /m, gpus: 2}
    critic: {model: /c, gpus: 2}
    reward:
      - {name: a, function: "m:f", url: "http://x"}
      - {name: a, function: "m:g"}
  data: {prompts: {path: /d}}
  template:
    labels: {"bad key!": v}
"""


def test_the_api_server_reports_every_broken_rule_at_once_as_rlhf_validate_does(
    kubectl: Kubectl, manifests_namespace: str, tmp_path: Path
) -> None:
    """Every CEL rule is judged together once the schema passes; `rlhf validate` names the same fields.
    (When the schema fails too, the API server stops before the rules: docs/validation.md.)"""
    fields = ["spec.models.critic", "spec.models.reward", "spec.models.reward[0]", "spec.template.labels"]
    dry = kubectl.apply(RULE_MISTAKES, namespace=manifests_namespace, dry_run=True, check=False)
    assert dry.returncode != 0
    for field in fields:
        assert re.search(rf"\* {re.escape(field)}: Invalid value", dry.stderr), (field, dry.stderr)
    path = tmp_path / "mistakes.yaml"
    path.write_text(RULE_MISTAKES)
    local = subprocess.run(
        [sys.executable, "-m", "rlhf_trainer.cli", "validate", str(path)], capture_output=True, text=True
    )
    assert local.returncode == 1
    assert sorted(line.split(": ", 1)[0] for line in local.stderr.splitlines()) == sorted(fields)

    with_schema_error = RULE_MISTAKES.replace("data: {prompts: {path: /d}}", "")
    dry = kubectl.apply(with_schema_error, namespace=manifests_namespace, dry_run=True, check=False)
    assert "spec.data: Required value" in dry.stderr
    assert "some validation rules were not checked" in dry.stderr


def test_explain_prints_the_field_descriptions(kubectl: Kubectl) -> None:
    actor = crd_schema()["properties"]["spec"]["properties"]["models"]["properties"]["actor"]
    output = " ".join(kubectl("explain", "rlhfjob.spec.models.actor").stdout.split())
    assert " ".join(actor["description"].split()) in output
    for name, prop in actor["properties"].items():
        assert f"{name} <" in output, f"explain lists no field {name}"
        assert " ".join(prop["description"].split()) in output, f"explain lacks the description of {name}"


def test_get_shows_phase_algorithm_step_reward_age(kubectl: Kubectl, namespace: str) -> None:
    create_tiny_job(kubectl, namespace, "cols")
    status = {
        "phase": "Running",
        "progress": {"step": 3, "totalSteps": 30, "percent": 10, "summary": "3/30", "reward": 0.625},
    }
    kubectl(
        "patch",
        "rlhfjob",
        "cols",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
        namespace=namespace,
    )
    lines = kubectl("get", "rlhf", namespace=namespace).stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "ALGORITHM", "STEP", "REWARD", "AGE"]
    assert lines[1].split()[:5] == ["cols", "Running", "grpo", "3/30", "0.625"]


FULL_STATUS = {
    "phase": "Running",
    "conditions": [
        {
            "type": "Running",
            "status": "True",
            "reason": "RayJobRunning",
            "message": "the Ray job is running",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
            "observedGeneration": 1,
        }
    ],
    "observedGeneration": 1,
    "attempt": 1,
    "rayJob": {
        "name": "tiny-a1",
        "jobStatus": "RUNNING",
        "deploymentStatus": "Running",
        "rayClusterName": "tiny-a1-raycluster-x7k2p",
        "dashboardURL": "tiny-a1-head-svc:8265",
        "jobId": "tiny-a1-4b7c1",
    },
    "startTime": "2026-01-02T03:00:00Z",
    "completionTime": "2026-01-02T04:00:00Z",
    "message": "step 12/30",
    "progress": {
        "step": 12,
        "totalSteps": 30,
        "percent": 40.0,
        "etaSeconds": 95.5,
        "updatedAt": "2026-01-02T03:04:05Z",
        "summary": "12/30",
        "reward": 0.5,
    },
    "metrics": {"reward/mean": 0.5, "kl/mean": 0.0125, "timing/step_s": 3.25},
    "checkpoints": [
        {
            "step": 10,
            "path": "/checkpoints/step-10",
            "time": "2026-01-02T03:03:00Z",
            "hfPath": "/checkpoints/step-10/hf",
            "attempt": 1,
            "run": 2,
        }
    ],
    "latestCheckpoint": {
        "step": 10,
        "path": "/checkpoints/step-10",
        "time": "2026-01-02T03:03:00Z",
        "hfPath": "/checkpoints/step-10/hf",
        "attempt": 1,
        "run": 2,
    },
    "failure": {
        "attempt": 1,
        "permanent": True,
        "reason": "PreflightFailed",
        "message": "spec.models.actor.model: /models/missing does not exist",
    },
    "resume": {
        "attempt": 1,
        "path": "s3://checkpoints/tiny/step_000010.a000000",
        "step": 10,
        "skipped": [{"path": "s3://checkpoints/tiny/step_000020.a000000", "reason": "OSError: truncated"}],
    },
}


def test_status_subresource_keeps_every_field_and_ignores_spec(kubectl: Kubectl, namespace: str) -> None:
    missing = uncovered(crd_schema()["properties"]["status"], FULL_STATUS, "status")
    assert not missing, f"FULL_STATUS lacks {missing}: add them so no field goes untested for pruning"
    job = create_tiny_job(kubectl, namespace, "st")

    def patch_status(body: dict) -> None:
        kubectl(
            "patch",
            "rlhfjob",
            "st",
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(body),
            namespace=namespace,
        )

    patch_status({"status": FULL_STATUS})
    stored = kubectl.json("get", "rlhfjob", "st", namespace=namespace)
    assert stored["status"] == FULL_STATUS

    # Spec through the status subresource: ignored; status through the main resource: ignored.
    patch_status({"spec": {"training": {"maxSteps": 999}}, "status": {"message": "spec ignored"}})
    kubectl(
        "patch",
        "rlhfjob",
        "st",
        "--type=merge",
        "-p",
        json.dumps({"status": {"phase": "Failed"}}),
        namespace=namespace,
    )
    after = kubectl.json("get", "rlhfjob", "st", namespace=namespace)
    assert after["spec"] == job["spec"]
    assert after["metadata"]["generation"] == job["metadata"]["generation"]
    assert after["status"] == {**FULL_STATUS, "message": "spec ignored"}


def test_configmap_owned_by_a_job_is_garbage_collected(kubectl: Kubectl, namespace: str) -> None:
    job = create_tiny_job(kubectl, namespace, "owner")
    owner = {
        "apiVersion": "rlhf.io/v1alpha1",
        "kind": "RLHFJob",
        "name": "owner",
        "uid": job["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for name, refs in (("owned", [owner]), ("unowned", [])):
        kubectl.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "data": {"k": "v"},
                "metadata": {"name": name, "ownerReferences": refs},
            },
            namespace=namespace,
        )
    kubectl("delete", "rlhfjob", "owner", namespace=namespace)

    def owned_gone() -> bool:
        return "NotFound" in kubectl("get", "configmap", "owned", namespace=namespace, check=False).stderr

    wait_for(owned_gone, 90, "kube-controller-manager's garbage collector to delete the owned ConfigMap")
    kubectl("get", "configmap", "unowned", namespace=namespace)


RAYCLUSTER = {
    "apiVersion": "ray.io/v1",
    "kind": "RayCluster",
    "metadata": {"name": "rc"},
    "spec": {
        "headGroupSpec": {
            "rayStartParams": {},
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "ray-head",
                            "image": "rayproject/ray:2.49.0",
                            "resources": {"limits": {"cpu": "1", "memory": "2Gi"}},
                        }
                    ]
                }
            },
        }
    },
}


def test_kuberay_crds_accept_a_raycluster_and_a_rayjob(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(RAYCLUSTER, namespace=namespace, dry_run=True)
    rayjob = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "rj"},
        "spec": {"entrypoint": "python -c 'print(1)'", "rayClusterSpec": RAYCLUSTER["spec"]},
    }
    kubectl.apply(rayjob, namespace=namespace, dry_run=True)
    bad = kubectl.apply(
        {**rayjob, "spec": {**rayjob["spec"], "noSuchField": 1}},
        namespace=namespace,
        dry_run=True,
        check=False,
    )
    assert bad.returncode != 0 and "noSuchField" in bad.stderr


def test_kuberay_operator_creates_the_head_pod(kuberay_operator, kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(RAYCLUSTER, namespace=namespace)

    def head_pod_created() -> bool:
        pods = kubectl.json(
            "get", "pods", "-l", "ray.io/cluster=rc,ray.io/node-type=head", namespace=namespace
        )
        return len(pods["items"]) == 1

    # No scheduler or kubelet here: the pod stays Pending, but the operator made it from the spec.
    wait_for(head_pod_created, 90, "the KubeRay operator to create the head pod")
    kubectl("get", "service", "-l", "ray.io/cluster=rc", namespace=namespace)


def test_deleted_namespace_is_emptied_and_removed(kubectl: Kubectl) -> None:
    # The namespace controller (kube-controller-manager) must delete the contents first.
    name = kubectl.create_namespace("doomed")
    kubectl.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}, namespace=name)
    kubectl("delete", "namespace", name, "--timeout=90s")
    assert "NotFound" in kubectl("get", "namespace", name, check=False).stderr
