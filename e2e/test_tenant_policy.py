"""The tenant boundary on the real API server: a tenant who may only create RLHFJobs in their own
namespace tries the attacks of issue 19 (finding 1: image, hostPath /, NFS, Secret volume,
LD_PRELOAD, control-plane nodeSelector, tolerate-everything, system-node-critical, reserved labels;
finding 5: a tiny manifest that asks for 64k GPUs; finding 6: `cpu: lots`, a deadline above int32).

One operator process for the module, `rlhf operator` under exactly the chart's RBAC (as in
test_operator.py) and the chart's default policy file (helm template --show-only
templates/policy.yaml, the ConfigMap the Deployment mounts). Every breaching job ends Failed with
reason PolicyViolation naming the field, and nothing is created for it. Every example's pods
(head, workers, KubeRay's submitter) pass a server-side dry-run in a namespace that enforces the
"restricted" Pod Security Standard.
"""

from __future__ import annotations

import copy
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_kube import ControlPlane, Kubectl
from test_operator import Api, OperatorProcess, Operators, eventually

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
IMAGE = "registry.example/rlhf-trainer:e2e"
PREFIX = f"tenant-{secrets.token_hex(3)}"
# Labels of everything the operator creates for a job.
CHILD_KINDS = "rayjobs.ray.io,configmaps,serviceaccounts,roles,rolebindings,networkpolicies"


def tiny(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / "tiny-grpo-cpu.yaml").read_text())
    doc["metadata"] = {"name": name}
    return doc


def with_spec(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """`changes` keys are dotted spec paths, e.g. template__volumes -> spec.template.volumes."""
    doc = copy.deepcopy(doc)
    for key, value in changes.items():
        node = doc["spec"]
        *parents, last = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return doc


MOUNT = [{"name": "x", "mountPath": "/x"}]
# name -> (spec changes, the field path the failure must name)
ATTACKS: dict[str, tuple[dict[str, Any], str]] = {
    "image": ({"image": "docker.io/library/ubuntu:24.04"}, "spec.image"),
    "hostpath-root": (
        {"template__volumes": [{"name": "x", "hostPath": {"path": "/"}}], "template__volumeMounts": MOUNT},
        "spec.template.volumes[0].hostPath",
    ),
    "nfs": (
        {
            "template__volumes": [{"name": "x", "nfs": {"server": "10.0.0.1", "path": "/"}}],
            "template__volumeMounts": MOUNT,
        },
        "spec.template.volumes[0].nfs",
    ),
    "secret-volume": (
        {
            "template__volumes": [{"name": "x", "secret": {"secretName": "admin-token"}}],
            "template__volumeMounts": MOUNT,
        },
        "spec.template.volumes[0].secret",
    ),
    "ld-preload": (
        {"template__env": [{"name": "LD_PRELOAD", "value": "/x/evil.so"}]},
        "spec.template.env[0].name",
    ),
    "pythonpath": ({"template__env": [{"name": "PYTHONPATH", "value": "/x"}]}, "spec.template.env[0].name"),
    "ray-auth-off": (
        {"template__env": [{"name": "RAY_AUTH_MODE", "value": "disabled"}]},
        "spec.template.env[0].name",
    ),
    "control-plane-node": (
        {"template__nodeSelector": {"node-role.kubernetes.io/control-plane": ""}},
        "spec.template.nodeSelector.node-role.kubernetes.io/control-plane",
    ),
    "tolerate-everything": (
        {"template__tolerations": [{"operator": "Exists"}]},
        "spec.template.tolerations[0]",
    ),
    "node-critical": ({"priorityClassName": "system-node-critical"}, "spec.priorityClassName"),
    "reserved-label": (
        {"template__labels": {"rlhf.io/job": "someone-else"}},
        "spec.template.labels.rlhf.io/job",
    ),
    "head-gpus": (
        {"head__resources": {"limits": {"nvidia.com/gpu": 8}}},
        "spec.head.resources.limits.nvidia.com/gpu",
    ),
    "reserved-annotation": (
        {"template__annotations": {"ray.io/overwrite-container-cmd": "true"}},
        "spec.template.annotations.ray.io/overwrite-container-cmd",
    ),
}


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> Api:
    return Api(kubeconfig)


@pytest.fixture(scope="module")
def policy_file(control_plane: ControlPlane, tmp_path_factory) -> Path:
    """The chart's default policy, as the Deployment mounts it."""
    rendered = subprocess.run(
        [str(control_plane.bin("helm")), "template", "rlhf", str(REPO / "helm" / "rlhf-operator"),
         "--show-only", "templates/policy.yaml"],
        capture_output=True, text=True, check=True, env=control_plane.env,
    ).stdout  # fmt: skip
    (config_map,) = [doc for doc in yaml.safe_load_all(rendered) if doc]
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(config_map["data"]["policy.yaml"])
    return path


@pytest.fixture(scope="module")
def operators(control_plane: ControlPlane, kubectl: Kubectl, tmp_path_factory) -> Iterator[Operators]:
    home = f"{PREFIX}-home"
    kubectl("create", "namespace", home)
    operators = Operators(control_plane, kubectl, home, tmp_path_factory.mktemp("operators"))
    try:
        yield operators
    finally:
        operators.close()
        kubectl("delete", "namespace", home, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def operator(operators: Operators, policy_file: Path) -> OperatorProcess:
    """The module's operator: the chart's RBAC and default policy, watching {PREFIX}-*."""
    return operators.start(
        f"{PREFIX}-*", RLHF_OPERATOR_POLICY=str(policy_file), POD_NAMESPACE=f"{PREFIX}-home"
    )


@pytest.fixture
def tenant(
    kubectl: Kubectl, make_sa_kubeconfig, request: pytest.FixtureRequest
) -> Iterator[tuple[str, Kubectl]]:
    """A fresh namespace and a kubectl for a tenant who may only create/read RLHFJobs in it."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))[:24].strip("-")
    namespace = f"{PREFIX}-{slug}-{secrets.token_hex(2)}"
    kubectl("create", "namespace", namespace)
    kubectl("create", "role", "rlhfjob-author", "--verb=create,get,list,watch",
            "--resource=rlhfjobs.rlhf.io", namespace=namespace)  # fmt: skip
    kubectl("create", "rolebinding", "rlhfjob-author", "--role=rlhfjob-author",
            f"--serviceaccount={namespace}:tenant", namespace=namespace)  # fmt: skip
    tenant_kubectl = Kubectl(kubectl.binary, make_sa_kubeconfig(namespace, "tenant"))
    # The boundary itself: the tenant can make none of what a job would give them.
    for verb, resource in (
        ("create", "pods"),
        ("get", "secrets"),
        ("create", "configmaps"),
        ("create", "rayjobs.ray.io"),
    ):
        assert (
            tenant_kubectl("auth", "can-i", verb, resource, namespace=namespace, check=False).stdout.strip()
            == "no"
        )
    yield namespace, tenant_kubectl
    kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)


def children(kubectl: Kubectl, namespace: str, job: str) -> list[str]:
    listed = kubectl.json("get", CHILD_KINDS, "-l", f"rlhf.io/job={job}", namespace=namespace)
    return [f"{item['kind']}/{item['metadata']['name']}" for item in listed["items"]]


# --------------------------------------------------------------------------------------------
# finding 1: every attack fails at once, naming its field, and nothing is created


def test_every_attack_fails_naming_its_field_and_creates_nothing(operator, api, kubectl, tenant):
    namespace, as_tenant = tenant
    for name, (changes, _) in ATTACKS.items():
        as_tenant.apply(with_spec(tiny(name), **changes), namespace=namespace)
    as_tenant.apply(tiny("honest"), namespace=namespace)  # the same tenant, within the policy
    for name, (_, field) in ATTACKS.items():
        job = api.wait_phase(namespace, name, "Failed")
        (failed,) = [c for c in job["status"]["conditions"] if c["type"] == "Failed"]
        assert failed["reason"] == "PolicyViolation", job["status"]
        assert f"{field}:" in job["status"]["message"], job["status"]["message"]
    eventually(lambda: api.rayjob(namespace, "honest-a0"), 15, "the honest job's RayJob")
    time.sleep(2.5)  # a resync passes: still nothing for the attackers
    for name in ATTACKS:
        assert children(kubectl, namespace, name) == [], name
        assert api.phase(namespace, name) == "Failed"
    honest = sorted(children(kubectl, namespace, "honest"))
    assert honest == sorted([
        "ConfigMap/honest-trainer-config", "NetworkPolicy/honest-ray", "RayJob/honest-a0",
        "Role/honest-trainer", "RoleBinding/honest-trainer", "ServiceAccount/honest-trainer",
    ])  # fmt: skip
    # The pods of the honest job are hardened and its Ray cluster requires a token.
    rayjob = api.rayjob(namespace, "honest-a0")
    assert rayjob["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["securityContext"]["runAsNonRoot"] is True
    assert rayjob["spec"]["submitterPodTemplate"]["spec"]["automountServiceAccountToken"] is False
    netpol = kubectl.json("get", "networkpolicy", "honest-ray", namespace=namespace)
    owner = netpol["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("RLHFJob", "honest", True)
    assert netpol["spec"]["podSelector"]["matchLabels"]["rlhf.io/job"] == "honest"
    control = netpol["spec"]["ingress"][1]["from"]
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": f"{PREFIX}-home"}}
    } in control


# --------------------------------------------------------------------------------------------
# finding 5: a 1 KB manifest that asks for 16 x 4096 GPUs on one-GPU pods


def test_a_tiny_manifest_asking_for_65k_gpus_is_refused_at_once(operator, api, kubectl, tenant):
    namespace, as_tenant = tenant
    doc = tiny("greedy")
    doc["spec"]["models"]["reward"] = [{"name": f"r{i}", "model": "/m", "gpus": 4096} for i in range(16)]
    doc["spec"]["workers"] = {"gpusPerPod": 1}
    assert len(yaml.safe_dump(doc)) < 2048
    started = time.monotonic()
    as_tenant.apply(doc, namespace=namespace)
    job = api.wait_phase(namespace, "greedy", "Failed", timeout=10)
    elapsed = time.monotonic() - started
    print(f"[tenant] 16 x 4096-GPU manifest Failed after {elapsed * 1000:.0f} ms")
    message = job["status"]["message"]
    assert "spec.models.reward: 16 entries" in message and "spec.models: requests 65536 GPUs" in message
    assert elapsed < 5.0
    assert children(kubectl, namespace, "greedy") == []


# --------------------------------------------------------------------------------------------
# finding 6: refused by the API server at apply, naming the field


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"head": {"resources": {"requests": {"cpu": "lots"}}}}, "spec.head.resources.requests.cpu"),
        ({"activeDeadlineSeconds": 2**31}, "spec.activeDeadlineSeconds"),
        ({"template": {"labels": {"bad key!": "x"}}}, "spec.template.labels"),
        ({"checkpoint": {"path": "/etc/rlhf", "volume": {"emptyDir": {}}}}, "spec.checkpoint.path"),
    ],
    ids=["cpu-lots", "deadline-int32", "label-key", "checkpoint-on-config"],
)
def test_specs_the_pods_could_not_take_are_refused_at_apply(operator, api, kubectl, tenant, change, field):
    namespace, as_tenant = tenant
    doc = tiny("refused")
    doc["spec"].update(change)
    proc = as_tenant.apply(doc, namespace=namespace, check=False)
    assert proc.returncode != 0
    assert field in proc.stderr, proc.stderr
    assert kubectl.json("get", "rlhfjobs", namespace=namespace)["items"] == []


# --------------------------------------------------------------------------------------------
# finding 7: every example's pods pass the restricted Pod Security Standard


def example_jobs() -> dict[str, dict[str, Any]]:
    """Every example RLHFJob, and every stage of the example pipelines as an RLHFJob of its own
    (an earlier stage's `stage://` model as the path its export would have)."""
    jobs: dict[str, dict[str, Any]] = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc["kind"] != "RLHFPipeline":
            jobs[path.stem] = doc
            continue
        for stage in doc["spec"]["stages"]:
            text = yaml.safe_dump(stage["spec"]).replace("stage://", "/checkpoints/exports/")
            name = f"{doc['metadata']['name']}-{stage['name']}"
            jobs[f"{path.stem}.{stage['name']}"] = {
                "apiVersion": doc["apiVersion"],
                "kind": "RLHFJob",
                "metadata": {"name": name},
                "spec": yaml.safe_load(text),
            }
    return jobs


EXAMPLE_JOBS = example_jobs()


def rendered_pods(stem: str, namespace: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The example's ServiceAccount (the head pod names it) and its pods as Pod objects."""
    from rlhf_operator.render import RenderOptions, render_job_objects
    from rlhf_trainer.api.validation import validate_manifest

    doc = copy.deepcopy(EXAMPLE_JOBS[stem])
    doc["metadata"]["namespace"] = namespace
    job, errors = validate_manifest(doc)
    assert not errors, errors
    objects = render_job_objects(job, RenderOptions(default_image=IMAGE))
    accounts = [o for o in objects if o["kind"] == "ServiceAccount"]
    rayjob = objects[-1]
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = [("head", cluster["headGroupSpec"]["template"])]
    templates += [(f"worker-{g['groupName']}", g["template"]) for g in cluster["workerGroupSpecs"]]
    templates.append(("submitter", rayjob["spec"]["submitterPodTemplate"]))
    pods = [
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {**template["metadata"], "name": f"{job.metadata.name}-{role}"[:63].rstrip("-")},
         "spec": template["spec"]}
        for role, template in templates
    ]  # fmt: skip
    return accounts, pods


@pytest.mark.parametrize("stem", sorted(EXAMPLE_JOBS))
def test_every_examples_pods_pass_the_restricted_pod_security_standard(stem, kubectl, namespace):
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/warn=restricted")  # fmt: skip
    accounts, pods = rendered_pods(stem, namespace)
    kubectl.apply(
        yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": accounts}), namespace=namespace
    )
    manifest = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": pods})
    proc = kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, namespace=namespace, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "violate" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    # The same pods without the hardening are refused: the namespace really enforces "restricted".
    bare = copy.deepcopy(pods[0])
    bare["spec"].pop("securityContext")
    bare["spec"]["containers"][0].pop("securityContext")
    proc = kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(bare), namespace=namespace, check=False
    )
    assert proc.returncode != 0 and "restricted" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------------------------
# KubeRay itself: token auth on, and the pods it makes are admitted under "restricted"


def test_kuberay_makes_token_protected_pods_that_restricted_admits(
    kuberay_operator, operators, policy_file, api, kubectl, namespace
):
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    operators.start(
        namespace, managed_by=None, RLHF_OPERATOR_POLICY=str(policy_file), POD_NAMESPACE=f"{PREFIX}-home"
    )
    kubectl.apply(tiny("guarded"), namespace=namespace)
    eventually(lambda: api.rayjob(namespace, "guarded-a0"), 15, "RayJob guarded-a0")

    def head_pod() -> dict[str, Any] | None:
        pods = kubectl.json("get", "pods", "-l", "ray.io/node-type=head", namespace=namespace)["items"]
        return pods[0] if pods else None

    # KubeRay creates the pods (no kubelet runs them): the API server admitted them under "restricted".
    pod = eventually(head_pod, 90, "KubeRay to create the head pod", interval=0.5)
    cluster = kubectl.json("get", "rayclusters.ray.io", namespace=namespace)["items"][0]
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    env = {var["name"]: var for var in pod["spec"]["containers"][0]["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    token_ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    secret = kubectl.json("get", "secret", token_ref["name"], namespace=namespace)
    assert token_ref["key"] in secret["data"]  # a random token KubeRay generated for this cluster
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "RayCluster"
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
    assert pod["spec"]["serviceAccountName"] == "guarded-trainer"
