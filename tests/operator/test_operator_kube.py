"""Which API server answers end a job (refusals) and which are retried; what an owned child syncs."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.rest import ApiException

from rlhf_operator.kube import refusal, sync_patch


def answer(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="x")
    exc.body = json.dumps({"kind": "Status", "message": message})
    return exc


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (422, 'RayJob.ray.io "j-a0" is invalid: spec.rayClusterSpec...cpu: Invalid value: "lots"'),
        (400, "the body of the request was in an unknown format"),
        (403, 'rayjobs "j-a0" is forbidden: exceeded quota: compute, requested: count/rayjobs.ray.io=1'),
        (403, 'admission webhook "deny.example" denied the request: images from docker.io are not allowed'),
        (413, "Request entity too large: limit is 3145728"),
    ],
)
def test_refusals_end_the_job_with_the_servers_message(status, message):
    assert refusal(answer(status, message)) == message


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (409, "Operation cannot be fulfilled: the object has been modified"),
        (429, "too many requests"),
        (500, "Internal error occurred: etcd timeout"),
        (504, "Timeout: request did not complete within the allotted timeout"),
        (404, "the server could not find the requested resource (post rayjobs.ray.io)"),
        # The operator's own RBAC: an admin fixes it, the job is not at fault.
        (
            403,
            'rayjobs.ray.io is forbidden: User "system:serviceaccount:ops:op" cannot create resource '
            '"rayjobs" in API group "ray.io" in the namespace "team-a"',
        ),
        (
            403,
            "unable to create new content in namespace t because it is being terminated (NamespaceTerminating)",
        ),
    ],
)
def test_transient_answers_are_retried(status, message):
    exc = answer(status, message)
    if "NamespaceTerminating" in message:
        exc.body = json.dumps(
            {"message": message, "details": {"causes": [{"reason": "NamespaceTerminating"}]}}
        )
    assert refusal(exc) is None


def test_an_owned_config_map_gets_exactly_the_rendered_keys():
    live = {"data": {"trainer.yaml": "old", "stale.yaml": "x"}}
    want = {"data": {"trainer.yaml": "new"}}
    assert sync_patch("ConfigMap", live, want) == {"data": {"trainer.yaml": "new", "stale.yaml": None}}
    assert sync_patch("ConfigMap", want, want) is None


def test_server_defaults_do_not_count_as_drift_and_created_only_kinds_are_never_patched():
    want = {"spec": {"podSelector": {"matchLabels": {"rlhf.io/job": "j"}}}}
    live = {"spec": {"podSelector": {"matchLabels": {"rlhf.io/job": "j"}}, "policyTypes": ["Ingress"]}}
    assert sync_patch("NetworkPolicy", live, want) is None
    assert sync_patch("Secret", {"data": {"token": "a"}}, {"data": {"token": "b"}}) is None
    assert sync_patch("Role", {"rules": []}, {"rules": [{"verbs": ["get"]}]}) == {
        "rules": [{"verbs": ["get"]}]
    }


@pytest.mark.parametrize("namespace", ["kube-system", "kube-public", "kube-node-lease"])
def test_jobs_in_system_namespaces_are_not_reconciled(namespace):
    import asyncio

    from rlhf_operator.decisions import Settings
    from rlhf_operator.metrics import OperatorMetrics
    from rlhf_operator.reconciler import Reconciler

    class NoCalls:
        def __getattr__(self, name):
            raise AssertionError(f"the operator called the API ({name}) for a job in {namespace}")

    reconciler = Reconciler(NoCalls(), Settings(default_image="img"), OperatorMetrics())
    assert asyncio.run(reconciler.reconcile(namespace, "job", handler="create")) is None
