"""The chart as helm renders it: lint, the objects of the default values and of every switch,
the operator Deployment's shape, values flowing into the operator's arguments, and the schema
refusing bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from .chartlib import ALL_SWITCHES_ON, CHART_DIR, find, render, run_helm

CHART_VERSION_LABEL = "rlhf-operator-0.1.0"


def kinds(objects: list[dict]) -> list[tuple[str, str]]:
    return sorted((o["kind"], o["metadata"]["name"]) for o in objects)


def container(objects: list[dict]) -> dict:
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    (operator,) = pod["containers"]
    return operator


def test_helm_lint_passes_with_defaults_and_with_every_switch_on(helm_home: Path) -> None:
    run_helm(["lint", "--strict", str(CHART_DIR)], helm_home)
    switches = [arg for key, value in ALL_SWITCHES_ON.items() for arg in ("--set", f"{key}={value}")]
    run_helm(["lint", "--strict", str(CHART_DIR), *switches], helm_home)


def test_default_rendering_has_no_object_that_needs_monitoring_crds(helm_home: Path) -> None:
    objects = render(helm_home)
    assert kinds(objects) == [
        ("ClusterRole", "rlhf-rlhf-operator"),
        ("ClusterRoleBinding", "rlhf-rlhf-operator"),
        ("ConfigMap", "rlhf-rlhf-operator-dashboard"),
        ("ConfigMap", "rlhf-rlhf-operator-policy"),
        ("Deployment", "rlhf-rlhf-operator"),
        ("Pod", "rlhf-rlhf-operator-test-metrics"),
        ("Service", "rlhf-rlhf-operator-metrics"),
        ("ServiceAccount", "rlhf-rlhf-operator"),
        ("ValidatingAdmissionPolicy", "rlhf-rlhf-operator-system-namespaces"),
        ("ValidatingAdmissionPolicy", "rlhf-rlhf-operator-trainer-status"),
        ("ValidatingAdmissionPolicyBinding", "rlhf-rlhf-operator-system-namespaces"),
        ("ValidatingAdmissionPolicyBinding", "rlhf-rlhf-operator-trainer-status"),
    ]
    for obj in objects:
        assert obj["metadata"]["labels"]["helm.sh/chart"] == CHART_VERSION_LABEL
        if not obj["kind"].startswith(("ClusterRole", "ValidatingAdmissionPolicy")):
            assert obj["metadata"]["namespace"] == "rlhf-system", obj["kind"]


def test_every_switch_on_adds_the_monitoring_objects(helm_home: Path) -> None:
    objects = render(helm_home, ALL_SWITCHES_ON)
    added = set(kinds(objects)) - set(kinds(render(helm_home)))
    assert added == {
        ("ServiceMonitor", "rlhf-rlhf-operator"),
        ("PodMonitor", "rlhf-rlhf-operator-jobs"),
        ("PrometheusRule", "rlhf-rlhf-operator"),
    }
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert find(objects, kind)["apiVersion"] == "monitoring.coreos.com/v1"


def test_switches_off_remove_their_objects(helm_home: Path) -> None:
    objects = render(
        helm_home,
        {
            "grafanaDashboard.enabled": "false",
            "tests.enabled": "false",
            "rbac.create": "false",
            "admissionPolicies.enabled": "false",
            "serviceAccount.create": "false",
            "serviceAccount.name": "ops-team-sa",
        },
    )
    assert kinds(objects) == [
        ("ConfigMap", "rlhf-rlhf-operator-policy"),
        ("Deployment", "rlhf-rlhf-operator"),
        ("Service", "rlhf-rlhf-operator-metrics"),
    ]
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ops-team-sa"


def test_operator_deployment_runs_one_replica_recreated_non_root_read_only(helm_home: Path) -> None:
    objects = render(helm_home)
    deployment = find(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == find(objects, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    operator = container(objects)
    assert operator["securityContext"]["readOnlyRootFilesystem"] is True
    assert operator["securityContext"]["allowPrivilegeEscalation"] is False
    assert operator["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # The read-only root needs a writable /tmp.
    mount, policy = operator["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    assert policy == {"name": "policy", "mountPath": "/etc/rlhf-operator", "readOnly": True}
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" in volume
    assert set(operator["resources"]["requests"]) == {"cpu", "memory"}
    assert operator["image"] == "ghcr.io/rlhf-operator/operator:0.1.0"
    # Selector and pod labels agree, or the Deployment would be rejected / the Service find nothing.
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert find(objects, "Service")["spec"]["selector"] == selector


def test_liveness_probe_and_service_point_at_the_operator_ports(helm_home: Path) -> None:
    objects = render(helm_home)
    operator = container(objects)
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert ports == {"metrics": 8080, "liveness": 8081}
    probe = operator["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "liveness"}
    assert operator["command"] == ["rlhf"]
    assert operator["args"][:4] == [
        "operator",
        "--metrics-port=8080",
        "--liveness-port=8081",
        "--trainer-image=ghcr.io/rlhf-operator/trainer:0.1.0",
    ]
    service = find(objects, "Service")
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("metrics", 8080, "metrics")


def test_values_reach_the_operator_arguments(helm_home: Path) -> None:
    objects = render(
        helm_home,
        {
            "operator.watchNamespaces": "{team-a,team-b}",
            "operator.trainerImage.repository": "registry.example/trainer",
            "operator.trainerImage.tag": "v9",
            "operator.metricsPort": "9090",
            "operator.livenessPort": "9091",
            "operator.peering": "rlhf",
            "operator.logLevel": "debug",
            "operator.extraArgs": "{--foo=bar}",
        },
    )
    operator = container(objects)
    assert operator["args"] == [
        "operator",
        "--metrics-port=9090",
        "--liveness-port=9091",
        "--trainer-image=registry.example/trainer:v9",
        "--namespace=team-a",
        "--namespace=team-b",
        "--peering=rlhf",
        "--verbose",
        "--foo=bar",
    ]
    assert {p["name"]: p["containerPort"] for p in operator["ports"]} == {"metrics": 9090, "liveness": 9091}
    # Peering needs the kopf.dev peering objects: the lead's RBAC grants them only then.
    rules = find(objects, "ClusterRole")["rules"]
    assert any("kopf.dev" in rule["apiGroups"] for rule in rules)
    assert not any(
        "kopf.dev" in rule["apiGroups"] for rule in find(render(helm_home), "ClusterRole")["rules"]
    )


def test_pod_placement_and_pull_secrets_reach_the_pod(helm_home: Path) -> None:
    objects = render(
        helm_home,
        {
            "nodeSelector.pool": "system",
            "tolerations[0].key": "dedicated",
            "tolerations[0].operator": "Exists",
            "imagePullSecrets[0].name": "regcred",
            "image.tag": "dev",
            "image.pullPolicy": "Always",
            "serviceAccount.annotations.team": "ml",
        },
    )
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert container(objects)["image"] == "ghcr.io/rlhf-operator/operator:dev"
    assert container(objects)["imagePullPolicy"] == "Always"
    assert find(objects, "ServiceAccount")["metadata"]["annotations"] == {"team": "ml"}


def test_name_overrides_rename_every_object(helm_home: Path) -> None:
    objects = render(helm_home, {"fullnameOverride": "rlhf-ops"})
    names = {o["metadata"]["name"] for o in objects}
    assert names == {
        "rlhf-ops",
        "rlhf-ops-metrics",
        "rlhf-ops-dashboard",
        "rlhf-ops-policy",
        "rlhf-ops-test-metrics",
        "rlhf-ops-system-namespaces",
        "rlhf-ops-trainer-status",
    }


def test_helm_test_hook_fetches_the_metrics_service_with_the_operator_image(helm_home: Path) -> None:
    objects = render(helm_home, namespace="ops")
    pod = find(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (test,) = pod["spec"]["containers"]
    assert test["image"] == container(objects)["image"]
    assert test["command"] == ["python", "-c"]
    script = test["args"][0]
    assert "http://rlhf-rlhf-operator-metrics.ops.svc:8080/metrics" in script
    compile(script, "helm-test", "exec")  # the operator image's python runs it
    assert test["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("operator.logLevel=trace", "logLevel"),
        ("operator.metricsPort=0", "metricsPort"),
        ("prometheusRule.stalledMinutes=0", "stalledMinutes"),
        ("serviceMonitor.interval=often", "interval"),
        ("operator.watchNamespaces[0]=Team_A", "watchNamespaces"),
        ("replicas=2", "replicas"),
    ],
)
def test_schema_rejects_bad_values_naming_the_key(helm_home: Path, value: str, complaint: str) -> None:
    proc = run_helm(["template", "rlhf", str(CHART_DIR), "--set", value], helm_home, check=False)
    assert proc.returncode != 0
    assert complaint in proc.stderr, proc.stderr
