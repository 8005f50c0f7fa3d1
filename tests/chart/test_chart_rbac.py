"""The operator's RBAC and admission policies as the chart renders them: only the verbs the code
uses, namespaced Roles when watchNamespaces is set, no system namespaces, and a trainer-status
policy that names every operator-owned status field."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from rlhf_trainer.api.status import OPERATOR_FIELDS, TRAINER_FIELDS

from .chartlib import CHART_DIR, find, helm_binary, helm_env, render, set_args

SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


def rules_by_resource(rules: list[dict]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault(f"{group}/{resource}", set()).update(rule["verbs"])
    return out


# The verbs operator/rlhf_operator/kube.py and kopf's watches use, and nothing more.
EXPECTED_JOB_RULES = {
    # create: an RLHFPipeline's stages are RLHFJobs (operator/rlhf_operator/pipeline_handlers.py).
    "rlhf.io/rlhfjobs": {"get", "list", "watch", "patch", "create"},
    "rlhf.io/rlhfjobs/status": {"get", "patch"},
    "rlhf.io/rlhfjobs/finalizers": {"update"},
    "rlhf.io/rlhfpipelines": {"get", "list", "watch", "patch"},
    "rlhf.io/rlhfpipelines/status": {"get", "patch"},
    "rlhf.io/rlhfpipelines/finalizers": {"update"},
    "ray.io/rayjobs": {"get", "list", "watch", "create", "patch"},
    "/configmaps": {"get", "create", "patch"},
    "/serviceaccounts": {"get", "create"},
    "/secrets": {"get", "create"},
    "rbac.authorization.k8s.io/roles": {"get", "create", "patch"},
    "rbac.authorization.k8s.io/rolebindings": {"get", "create", "patch"},
    "networking.k8s.io/networkpolicies": {"get", "create", "patch"},
    "/events": {"create", "list"},
    # list: the Warning events of a job's RayJob and RayCluster; pods: a job's pods that cannot
    # start (operator/rlhf_operator/startup.py).
    "/pods": {"get", "list", "watch"},
    # patch: the job's labels on KubeRay's submitter Job (operator/rlhf_operator/reconciler.py).
    "batch/jobs": {"patch"},
}
CLUSTER_READS = {
    "/namespaces": {"get", "list", "watch"},
    "apiextensions.k8s.io/customresourcedefinitions": {"get", "list", "watch"},
}


def test_cluster_wide_rbac_holds_only_the_verbs_the_code_uses(helm_home: Path) -> None:
    objects = render(helm_home)
    rules = rules_by_resource(find(objects, "ClusterRole")["rules"])
    assert rules == {**EXPECTED_JOB_RULES, **CLUSTER_READS}
    assert not any("*" in verbs for verbs in rules.values())
    assert "delete" not in set().union(*rules.values())  # the garbage collector deletes children


def test_watched_namespaces_get_roles_and_the_cluster_role_only_reads(helm_home: Path) -> None:
    objects = render(helm_home, {"operator.watchNamespaces": "{team-a,team-b}"})
    roles = [obj for obj in objects if obj["kind"] == "Role"]
    bindings = [obj for obj in objects if obj["kind"] == "RoleBinding"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for role in roles:
        assert rules_by_resource(role["rules"]) == EXPECTED_JOB_RULES
    cluster_rules = rules_by_resource(find(objects, "ClusterRole")["rules"])
    assert cluster_rules == CLUSTER_READS
    assert not set().union(*cluster_rules.values()) & WRITE_VERBS
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["name"] == find(objects, "ServiceAccount")["metadata"]["name"]


@pytest.mark.parametrize("system", SYSTEM_NAMESPACES)
def test_system_namespaces_cannot_be_watched(helm_home: Path, system: str) -> None:
    proc = subprocess.run(
        [str(helm_binary()), "template", "rlhf", str(CHART_DIR),
         *set_args({"operator.watchNamespaces": f"{{team-a,{system}}}"})],
        capture_output=True, text=True, env=helm_env(helm_home),
    )  # fmt: skip
    assert proc.returncode != 0
    assert "watchNamespaces" in proc.stderr


def test_trainer_status_policy_guards_every_operator_field_and_no_trainer_field(helm_home: Path) -> None:
    objects = render(helm_home)
    policies = {p["metadata"]["name"]: p for p in objects if p["kind"] == "ValidatingAdmissionPolicy"}
    bindings = [b for b in objects if b["kind"] == "ValidatingAdmissionPolicyBinding"]
    assert {b["spec"]["policyName"] for b in bindings} == set(policies)
    assert all(b["spec"]["validationActions"] == ["Deny"] for b in bindings)
    policy = policies["rlhf-rlhf-operator-trainer-status"]
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["rlhfjobs/status"]
    expressions = " ".join(v["expression"] for v in policy["spec"]["validations"])
    guarded = set(re.findall(r"object\.status\.(\w+) == oldObject", expressions))
    assert guarded == set(OPERATOR_FIELDS)
    assert not guarded & set(TRAINER_FIELDS)


def test_operator_writes_in_system_namespaces_are_denied_by_policy(helm_home: Path) -> None:
    objects = render(helm_home)
    policy = find(objects, "ValidatingAdmissionPolicy", "rlhf-rlhf-operator-system-namespaces")
    selector = policy["spec"]["matchConstraints"]["namespaceSelector"]["matchExpressions"][0]
    assert sorted(selector["values"]) == sorted(SYSTEM_NAMESPACES)
    account = find(objects, "ServiceAccount")["metadata"]["name"]
    assert (
        f"system:serviceaccount:rlhf-system:{account}" in policy["spec"]["matchConditions"][0]["expression"]
    )
    off = render(helm_home, {"admissionPolicies.enabled": "false"})
    assert not [o for o in off if o["kind"].startswith("ValidatingAdmissionPolicy")]
