"""The chart's monitoring: the Grafana dashboard, the alert rules, the ServiceMonitor and the
PodMonitor. Every PromQL expression must name only metrics the code exports; that the expressions
return data from a real Prometheus is e2e/test_prometheus.py's job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .chartlib import (
    ALL_SWITCHES_ON,
    alert_rules,
    dashboard,
    dashboard_queries,
    exported_metric_names,
    find,
    promql_metric_names,
    render,
    template_variable_queries,
)

# What a user of the dashboard must find on it (the list), by panel title.
REQUIRED_PANELS = {
    "Jobs by phase",
    "Progress",
    "Reward",
    "KL",
    "Response length",
    "Step time by phase",
    "Tokens/s",
    "Restarts",
}
PHASES = (
    "generate",
    "reward",
    "reference",
    "values",
    "advantage",
    "train_actor",
    "train_critic",
    "weight_sync",
    "checkpoint",
)


def test_promql_metric_names_finds_metrics_and_skips_functions_labels_and_windows() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, handler) (rate(rlhf_x_bucket{job=~"$job"}[$__rate_interval])))'
        " / on (namespace, job) group_left (phase) max without (pod) (rlhf_y) > bool 3"
        " and time() - rlhf_z offset 5m"
    )
    assert promql_metric_names(expr) == {"rlhf_x_bucket", "rlhf_y", "rlhf_z"}
    assert promql_metric_names('rlhf_job_info{phase="Failed", job=~"a|b"} == 1') == {"rlhf_job_info"}


def test_dashboard_is_valid_json_with_the_required_panels() -> None:
    board = dashboard()
    titles = {panel["title"] for panel in board["panels"]}
    assert REQUIRED_PANELS <= titles, REQUIRED_PANELS - titles
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]


def test_step_time_panel_breaks_the_step_down_by_every_phase() -> None:
    (panel,) = [p for p in dashboard()["panels"] if p["title"] == "Step time by phase"]
    used = set().union(*(promql_metric_names(t["expr"]) for t in panel["targets"]))
    assert used == {f"rlhf_timing_{phase}_s" for phase in PHASES}


def test_every_dashboard_query_names_only_exported_metrics() -> None:
    exported = exported_metric_names()
    queries = dashboard_queries() + template_variable_queries()
    assert len(queries) > 20
    for where, expr in queries:
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - exported
        assert not unknown, f"dashboard {where}: {sorted(unknown)} not exported by the code ({expr!r})"


def test_every_alert_names_only_exported_metrics(helm_home: Path) -> None:
    exported = exported_metric_names()
    rules = alert_rules(render(helm_home, {"prometheusRule.enabled": "true"}))
    assert {r["alert"] for r in rules} == {
        "RLHFJobFailed",
        "RLHFJobStalled",
        "RLHFJobRestarted",
        "RLHFOperatorReconcileErrors",
    }
    for rule in rules:
        names = promql_metric_names(rule["expr"])
        assert names, rule["alert"]
        unknown = names - exported
        assert not unknown, f"alert {rule['alert']}: {sorted(unknown)} not exported by the code"
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert "{{ $labels." in rule["annotations"]["summary"], rule["alert"]


def test_alert_thresholds_come_from_values(helm_home: Path) -> None:
    rules = {
        r["alert"]: r["expr"]
        for r in alert_rules(
            render(
                helm_home,
                {
                    "prometheusRule.enabled": "true",
                    "prometheusRule.stalledMinutes": "45",
                    "prometheusRule.reconcileErrorWindow": "15m",
                    "prometheusRule.restartWindow": "2h",
                },
            )
        )
    }
    assert "> 2700" in rules["RLHFJobStalled"]
    assert 'rlhf_job_info{phase="Running"}' in rules["RLHFJobStalled"]
    assert 'rlhf_job_info{phase="Failed"}' in rules["RLHFJobFailed"]
    assert "rlhf_operator_reconcile_errors_total[15m]" in rules["RLHFOperatorReconcileErrors"]
    assert "changes(rlhf_job_attempt[2h])" in rules["RLHFJobRestarted"]


def test_dashboard_configmap_carries_the_file_and_the_sidecar_label(helm_home: Path) -> None:
    objects = render(helm_home, {"grafanaDashboard.namespace": "monitoring"})
    configmap = find(objects, "ConfigMap", "rlhf-rlhf-operator-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert json.loads(configmap["data"]["rlhf.json"]) == dashboard()


def test_service_monitor_scrapes_the_metrics_service_keeping_job_labels(helm_home: Path) -> None:
    objects = render(helm_home, {**ALL_SWITCHES_ON, "serviceMonitor.labels.release": "kps"})
    monitor = find(objects, "ServiceMonitor")
    service = find(objects, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["rlhf-system"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["honorLabels"] is True


@pytest.mark.parametrize(
    ("watch", "expected"),
    [
        (None, {"any": True}),
        ("{team-a,team-b}", {"matchNames": ["team-a", "team-b"]}),
    ],
)
def test_pod_monitor_selects_job_pods_in_the_watched_namespaces(helm_home: Path, watch, expected) -> None:
    values = {**ALL_SWITCHES_ON, **({"operator.watchNamespaces": watch} if watch else {})}
    monitor = find(render(helm_home, values), "PodMonitor")
    assert monitor["spec"]["selector"] == {"matchExpressions": [{"key": "rlhf.io/job", "operator": "Exists"}]}
    assert monitor["spec"]["namespaceSelector"] == expected
    endpoints = {e["port"]: e for e in monitor["spec"]["podMetricsEndpoints"]}
    assert set(endpoints) == {"trainer-metrics", "metrics"}
    assert all(e["path"] == "/metrics" for e in endpoints.values())
    # The tenant's image is not trusted with its labels: namespace and job come from the pod.
    for endpoint in endpoints.values():
        assert endpoint["honorLabels"] is False
        assert {(tuple(r["sourceLabels"]), r["targetLabel"]) for r in endpoint["relabelings"]} == {
            (("__meta_kubernetes_namespace",), "namespace"),
            (("__meta_kubernetes_pod_label_rlhf_io_job",), "job"),
        }


def test_pod_monitor_ports_and_label_match_what_the_operator_renders(helm_home: Path) -> None:
    """The PodMonitor finds the trainer only if the operator's Ray pods carry the label it selects
    and name their ports as it names them."""
    from rlhf_operator.render import RenderOptions, render_job_objects
    from rlhf_trainer.api.validation import validate_manifest

    from .chartlib import REPO, load_yaml

    job, errors = validate_manifest(load_yaml(REPO / "examples" / "grpo-qwen2.5-7b-math.yaml"))
    assert not errors
    rayjob = render_job_objects(job, RenderOptions(default_image="trainer:test"))[-1]
    cluster = rayjob["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]
    workers = [group["template"] for group in cluster["workerGroupSpecs"]]
    assert workers

    monitor = find(render(helm_home, ALL_SWITCHES_ON), "PodMonitor")
    selected_label = monitor["spec"]["selector"]["matchExpressions"][0]["key"]
    wanted = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}

    def port_names(template: dict) -> set[str]:
        return {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}

    assert selected_label in head["metadata"]["labels"]
    assert wanted <= port_names(head)
    head_ports = {
        p["name"]: p["containerPort"] for c in head["spec"]["containers"] for p in c.get("ports", [])
    }
    assert head_ports["trainer-metrics"] == 9400
    for template in workers:
        assert selected_label in template["metadata"]["labels"]
        assert "metrics" in port_names(template)
