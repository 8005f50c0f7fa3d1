"""The tenant boundary at run time, on the real control plane, with the operator under the chart's
RBAC (e2e/test_operator.py's Operators) and the chart's admission policies installed:

- a job whose children's names are taken by objects someone else made fails once (NameConflict,
  naming the object) and leaves those objects byte-identical: the ServiceAccount `ci-trainer` an
  admin bound to `admin`, a Role `build-trainer`, a ConfigMap `app-trainer-config`;
- a child the API server refuses (a quota) fails the job once with the server's message;
- a failure the trainer reports as permanent (status.failure, written with the trainer's own
  ServiceAccount) ends the job without a new attempt, backoffLimit notwithstanding;
- the trainer's ServiceAccount can write its own status fields and none of the operator's;
- the operator's ServiceAccount writes nothing in the cluster's system namespaces.

As in test_operator.py, the tests play KubeRay (they write RayJob status) and the RayJobs carry
spec.managedBy so that no KubeRay controller acts on them.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_kube import ControlPlane, Kubectl, KubectlError
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException
from test_operator import REPO, Api, Operators, condition, eventually, example, rayjob_names

pytestmark = pytest.mark.e2e

PREFIX = f"rlhften-{secrets.token_hex(3)}"
MERGE = "application/merge-patch+json"


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> Api:
    return Api(kubeconfig)


@pytest.fixture(scope="module")
def operators(control_plane: ControlPlane, kubectl: Kubectl, tmp_path_factory) -> Iterator[Operators]:
    home = f"{PREFIX}-home"
    kubectl("create", "namespace", home)
    operators = Operators(control_plane, kubectl, home, tmp_path_factory.mktemp("operators"))
    yield operators
    operators.close()
    kubectl("delete", "namespace", home, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def policies(control_plane: ControlPlane, kubectl: Kubectl, operators: Operators) -> Iterator[list[str]]:
    """The chart's ValidatingAdmissionPolicies, for the release whose operator `operators` runs."""
    rendered = subprocess.run(
        [str(control_plane.bin("helm")), "template", operators.release, str(REPO / "helm" / "rlhf-operator"),
         "--show-only", "templates/admission-policies.yaml", "--namespace", operators.home],
        capture_output=True, text=True, check=True, env=control_plane.env,
    ).stdout  # fmt: skip
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    kubectl.apply(rendered)
    names = [doc["metadata"]["name"] for doc in docs if doc["kind"] == "ValidatingAdmissionPolicy"]
    yield names
    for name in names:
        kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name,
                "--ignore-not-found", check=False)  # fmt: skip


@pytest.fixture(scope="module")
def operator(operators: Operators):
    return operators.start(f"{PREFIX}-*")


@pytest.fixture
def job_namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower().removeprefix("test_"))
    name = f"{PREFIX}-{base[:40].strip('-')}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def events_of(kubectl: Kubectl, namespace: str, job: str) -> list[dict[str, Any]]:
    listed = kubectl.json("get", "events", f"--field-selector=involvedObject.name={job}", namespace=namespace)
    return [e for e in listed["items"] if e["involvedObject"].get("kind") == "RLHFJob"]


def as_account(make_sa_kubeconfig, namespace: str, account: str) -> k8s_client.CustomObjectsApi:
    kubeconfig = make_sa_kubeconfig(namespace, account, create=False)
    return k8s_client.CustomObjectsApi(k8s_config.new_client_from_config(config_file=str(kubeconfig)))


def patch_status(custom: k8s_client.CustomObjectsApi, namespace: str, job: str, status: dict, **kw: Any):
    return custom.patch_namespaced_custom_object_status(
        "rlhf.io", "v1alpha1", namespace, "rlhfjobs", job, {"status": status}, _content_type=MERGE, **kw
    )


# --------------------------------------------------------------------------------------------


def test_colliding_names_fail_the_job_once_and_leave_the_objects_byte_identical(
    operator, api, kubectl, job_namespace
):
    namespace = job_namespace
    # What an admin made before any job existed.
    kubectl("create", "serviceaccount", "ci-trainer", namespace=namespace)
    kubectl("create", "rolebinding", "ci-trainer-admin", "--clusterrole=admin",
            f"--serviceaccount={namespace}:ci-trainer", namespace=namespace)  # fmt: skip
    kubectl("create", "role", "build-trainer", "--verb=get,list", "--resource=secrets", namespace=namespace)
    kubectl("create", "configmap", "app-trainer-config", "--from-literal=trainer.yaml=owned: by-someone-else",
            "--from-literal=other=keep", namespace=namespace)  # fmt: skip
    taken = {
        "ci": ("ServiceAccount", "serviceaccount/ci-trainer"),
        "build": ("Role", "role.rbac.authorization.k8s.io/build-trainer"),
        "app": ("ConfigMap", "configmap/app-trainer-config"),
    }
    before = {job: kubectl.json("get", ref, namespace=namespace) for job, (_, ref) in taken.items()}

    for job in taken:
        kubectl.apply(example("grpo-qwen2.5-7b-math", job), namespace=namespace)
    for job, (kind, ref) in taken.items():
        done = api.wait_phase(namespace, job, "Failed", timeout=30)
        failed = condition(done, "Failed")
        assert failed["reason"] == "NameConflict", failed
        assert (
            f"{kind} {namespace}/{ref.split('/')[1]} already exists and is not this job's"
            in failed["message"]
        )
        assert done["status"]["message"].startswith("NameConflict: ")
    time.sleep(3)  # resyncs and RayJob events come and go: nothing is retried
    assert rayjob_names(api, namespace) == []
    for job, (kind, ref) in taken.items():
        assert kubectl.json("get", ref, namespace=namespace) == before[job], f"{kind} of {job} was changed"
        events = [e for e in events_of(kubectl, namespace, job) if e["reason"] == "Failed"]
        assert len(events) == 1 and events[0]["count"] == 1, events
        assert ref.split("/")[1] in events[0]["message"]
    assert operator.proc.poll() is None


def test_a_child_the_server_refuses_fails_the_job_once_with_its_message(
    operator, api, kubectl, job_namespace
):
    namespace = job_namespace
    kubectl.apply(
        {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-rayjobs"},
         "spec": {"hard": {"count/rayjobs.ray.io": "0"}}},
        namespace=namespace,
    )  # fmt: skip
    eventually(
        lambda: (
            kubectl.json("get", "resourcequota", "no-rayjobs", namespace=namespace)
            .get("status", {})
            .get("hard")
        ),
        30,
        "the quota controller to publish the quota",
    )
    kubectl.apply(example("grpo-qwen2.5-7b-math", "quota", backoffLimit=3), namespace=namespace)
    job = api.wait_phase(namespace, "quota", "Failed", timeout=30)
    failed = condition(job, "Failed")
    assert failed["reason"] == "CreateRefused"
    # "exceeded quota: no-rayjobs", or "status unknown for quota: no-rayjobs" while the quota
    # controller has not counted the RayJobs yet: a refusal either way.
    assert 'rayjobs.ray.io "quota-a0" is forbidden' in failed["message"], failed
    assert "quota: no-rayjobs" in failed["message"], failed
    assert len(failed["message"]) <= 1100
    time.sleep(3)
    assert rayjob_names(api, namespace) == []
    events = [e for e in events_of(kubectl, namespace, "quota") if e["reason"] == "Failed"]
    assert len(events) == 1 and "quota: no-rayjobs" in events[0]["message"], events
    assert operator.log().count("quota: no-rayjobs") <= 2, operator.log()[-3000:]  # not retried every 5 s


def test_a_permanent_trainer_failure_ends_the_job_without_another_attempt(
    operator, api, kubectl, job_namespace, make_sa_kubeconfig
):
    namespace = job_namespace
    kubectl.apply(example("grpo-qwen2.5-7b-math", "perm", backoffLimit=2), namespace=namespace)
    eventually(lambda: api.rayjob(namespace, "perm-a0"), 15, "RayJob perm-a0")
    api.set_rayjob_status(namespace, "perm-a0", jobDeploymentStatus="Running", jobStatus="RUNNING")
    api.wait_phase(namespace, "perm", "Running")
    # The trainer reports why it stops, as the trainer's own ServiceAccount (the operator made it).
    trainer = as_account(make_sa_kubeconfig, namespace, "perm-trainer")
    failure = {"attempt": 0, "permanent": True, "reason": "PreflightFailed",
               "message": "models.actor.model: /models/missing does not exist"}  # fmt: skip
    patch_status(trainer, namespace, "perm", {"failure": failure})
    api.set_rayjob_status(
        namespace, "perm-a0", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed",
        message="Job entrypoint command failed with exit code 2",
    )  # fmt: skip
    job = api.wait_phase(namespace, "perm", "Failed")
    assert job["status"]["message"] == "PreflightFailed: models.actor.model: /models/missing does not exist"
    assert condition(job, "Failed")["reason"] == "PreflightFailed"
    assert job["status"]["failure"] == failure  # the trainer's field, untouched
    time.sleep(2.5)  # a resync later: no attempt 1
    assert rayjob_names(api, namespace) == ["perm-a0"]


def test_the_trainer_account_writes_only_the_trainer_status_fields(
    policies, operator, api, kubectl, job_namespace, make_sa_kubeconfig
):
    namespace = job_namespace
    kubectl.apply(example("grpo-qwen2.5-7b-math", "own"), namespace=namespace)
    api.wait_phase(namespace, "own", "Pending", timeout=30)
    trainer = as_account(make_sa_kubeconfig, namespace, "own-trainer")

    def refused(status: dict) -> str | None:
        try:  # a dry run: admission decides, nothing is stored
            patch_status(trainer, namespace, "own", status, dry_run="All")
        except ApiException as exc:
            return exc.body if exc.status in (403, 422) else None
        return None

    # The API server picks a new policy up within a few seconds.
    message = eventually(lambda: refused({"phase": "Succeeded"}), 30, "the policy to refuse phase")
    assert "status.phase is owned by the operator" in message
    for status in (
        {"conditions": []},
        {"message": "all good"},
        {"attempt": 7},
        {"completionTime": "2025-03-01T12:00:00Z"},
        {"rayJob": {"name": "elsewhere"}},
    ):
        assert "is owned by the operator" in (refused(status) or ""), f"the trainer could write {status}"
        with pytest.raises(ApiException):
            patch_status(trainer, namespace, "own", status)

    progress = {"step": 3, "totalSteps": 10, "percent": 30.0, "summary": "3/10"}
    patch_status(trainer, namespace, "own", {"progress": progress, "metrics": {"reward/mean": 0.5}})
    patch_status(trainer, namespace, "own", {"failure": {"attempt": 0, "permanent": False, "reason": "X"}})
    job = api.job(namespace, "own")
    assert job["status"]["progress"]["step"] == 3 and job["status"]["metrics"] == {"reward/mean": 0.5}
    assert job["status"]["phase"] == "Pending"
    # The operator keeps writing its own fields through the same policy.
    api.set_rayjob_status(namespace, "own-a0", jobDeploymentStatus="Running", jobStatus="RUNNING")
    api.wait_phase(namespace, "own", "Running")


def test_the_operator_account_writes_nothing_in_system_namespaces(
    policies, operators, control_plane, kubectl
):
    as_operator = Kubectl(control_plane.bin("kubectl"), operators.kubeconfig)
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{PREFIX}-probe"}, "data": {}}

    def denied() -> str | None:
        try:
            as_operator.apply(manifest, namespace="kube-system", dry_run=True)
        except KubectlError as exc:
            return str(exc)
        return None

    message = eventually(denied, 30, "the policy to deny the operator in kube-system")
    assert "does not write in the cluster's system namespaces" in message
    # Its own namespaces are unaffected (RBAC allows ConfigMaps everywhere when cluster-wide).
    as_operator.apply(manifest, namespace=operators.home, dry_run=True)
