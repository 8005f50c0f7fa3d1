"""The platform policy in the chart: values, schema and the ConfigMap the operator reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rlhf_operator.policy import POLICY_ENV, Policy, load_policy, values_schema

from .chartlib import CHART_DIR, find, render, run_helm


def test_the_chart_default_policy_is_the_built_in_one() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert Policy.model_validate(values["policy"]) == Policy()
    assert load_policy(CHART_DIR / "values.yaml") == Policy()


def test_values_schema_holds_the_policy_schema() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["properties"]["policy"] == values_schema(), "regenerate: policy.values_schema()"


def test_the_policy_reaches_the_operator_as_a_mounted_file(helm_home: Path, tmp_path: Path) -> None:
    objects = render(
        helm_home,
        {"policy.allowedPriorityClasses[0]": "batch", "policy.networkPolicy.controlNamespaces[0]": "ray"},
    )
    config_map = find(objects, "ConfigMap", "rlhf-rlhf-operator-policy")
    path = tmp_path / "policy.yaml"
    path.write_text(config_map["data"]["policy.yaml"])
    policy = load_policy(path)
    assert policy.allowed_priority_classes == ["batch"]
    assert policy.network_policy.control_namespaces == ["ray"]
    pod = find(objects, "Deployment")["spec"]["template"]
    (operator,) = pod["spec"]["containers"]
    env = {var["name"]: var for var in operator["env"]}
    assert env[POLICY_ENV]["value"] == "/etc/rlhf-operator/policy.yaml"
    assert {"name": "policy", "mountPath": "/etc/rlhf-operator", "readOnly": True} in operator["volumeMounts"]
    assert {"name": "policy", "configMap": {"name": "rlhf-rlhf-operator-policy"}} in pod["spec"]["volumes"]
    # A policy edit rolls the operator (it reads the policy once, at start).
    default = find(render(helm_home), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert pod["metadata"]["annotations"]["checksum/policy"] != default["checksum/policy"]


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("policy.allowedVolumeTypes[0]=hostpath", "allowedVolumeTypes"),
        ("policy.maxGpus=-1", "maxGpus"),
        ("policy.freeTolerations=yes", "freeTolerations"),
        ("policy.allowAnything=true", "allowAnything"),
    ],
)
def test_schema_rejects_bad_policy_values(helm_home: Path, value: str, complaint: str) -> None:
    proc = run_helm(["template", "rlhf", str(CHART_DIR), "--set", value], helm_home, check=False)
    assert proc.returncode != 0
    assert complaint in proc.stderr, proc.stderr
