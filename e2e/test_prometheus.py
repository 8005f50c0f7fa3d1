"""The chart's Grafana dashboard and alert rules against a real Prometheus (Debian's package,
scraping every second on loopback) that scrapes a running operator and a running trainer.

What runs (once for the module):
- `rlhf operator` (subprocess, admin kubeconfig) watching a fresh namespace of the real control
  plane, /metrics scraped as the chart's ServiceMonitor would (honor_labels as rendered there).
- `rlhf train --config` (subprocess): the real trainer driver with the config the operator put in
  the job's ConfigMap (backend switched to local, metricsPort to a free port, outputDir to a temp
  dir), a tiny PPO job on CPU, reporting status as the trainer ServiceAccount the operator created,
  /metrics scraped as the chart's PodMonitor would.
- Prometheus loads the chart's own PrometheusRule (rendered by helm with default thresholds) as
  its rule file.

No kubelet or KubeRay runs here, so the test writes RayJob status as KubeRay would. The jobs:
- ppo-live: attempt 0's RayJob fails, the operator restarts it (attempt 1, RLHFJobRestarted), the
  new RayJob runs and the real trainer trains.
- stalled: Running, but its trainer's last report is two hours old. It is written by the trainer's
  own status code (telemetry.status.progress + KubernetesStatusSink) with its clock set two hours
  back: waiting out the chart's 30 minutes is not an option. That is the one value not produced live.
- broken: 12 GPUs that pods of 8 cannot hold: the operator fails it (RLHFJobFailed).
- blocked: an admission webhook the API server cannot reach guards the creation of its RayJob
  (HTTP 500, a failure worth retrying), so every reconcile fails at that write, and kopf and the
  resync loop keep retrying it (RLHFOperatorReconcileErrors).

The trainer is scraped as the chart's PodMonitor scrapes it: its own labels not honoured, its
`namespace` and `job` target labels taken from the pod (the relabelings, applied here to the
namespace and rlhf.io/job label of ppo-live's head pod).

Every dashboard query (Grafana's variables replaced: all namespaces/jobs, 15s rate window) must
return at least one finite value; every alert's expression, threshold included, must hold for
exactly the job it is about; and Prometheus' own rule evaluation must fire all four alerts.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_kube import ControlPlane, Kubectl, free_port
from monitoring_scenario import Scenario, eventually, tiny_ppo_job
from prometheus_server import Prometheus, ScrapeJob, finite_values, prometheus_binary

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "chart"))
import chartlib  # noqa: E402

pytestmark = pytest.mark.e2e

STALLED_FOR_S = 2 * 3600
READY_TIMEOUT_S = 300
QUERIES = chartlib.dashboard_queries()
VARIABLES = chartlib.template_variable_queries()


def render_chart(control_plane: ControlPlane, home: Path) -> list[dict[str, Any]]:
    values = {
        "prometheusRule.enabled": "true",
        "serviceMonitor.enabled": "true",
        "podMonitor.enabled": "true",
    }
    argv = [
        str(control_plane.bin("helm")),
        "template",
        "rlhf",
        str(chartlib.CHART_DIR),
        *chartlib.set_args(values),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True, env=chartlib.helm_env(home))
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def scraping_like_the_chart(
    objects: list[dict[str, Any]], operator_target: str, trainer_target: str, trainer_pod: dict[str, str]
) -> list[ScrapeJob]:
    """Scrape jobs with the honorLabels, paths and relabelings of the chart's ServiceMonitor and
    PodMonitor; `trainer_pod` is the Kubernetes service-discovery metadata of the trainer's pod."""
    (operator,) = chartlib.find(objects, "ServiceMonitor")["spec"]["endpoints"]
    pod_endpoints = chartlib.find(objects, "PodMonitor")["spec"]["podMetricsEndpoints"]
    trainer = next(e for e in pod_endpoints if e["port"] == "trainer-metrics")
    labels = tuple(
        (rule["targetLabel"], trainer_pod[rule["sourceLabels"][0]]) for rule in trainer.get("relabelings", [])
    )
    return [
        ScrapeJob("rlhf-operator", operator_target, operator["honorLabels"], operator["path"]),
        ScrapeJob("rlhf-trainer", trainer_target, trainer["honorLabels"], trainer["path"], labels),
    ]


@dataclass
class Stack:
    prometheus: Prometheus
    namespace: str
    operator_log: Path
    trainer_log: Path


@pytest.fixture(scope="module")
def stack(
    control_plane: ControlPlane, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    from rlhf_trainer.demo.build import build_demo

    prometheus_binary()  # fail first, with the install hint, when it is missing
    started = time.monotonic()

    def stage(what: str) -> None:
        print(f"[prometheus-e2e] {time.monotonic() - started:6.1f}s {what}", flush=True)

    work = tmp_path_factory.mktemp("prometheus-e2e")
    demo = build_demo(str(work / "demo"))
    namespace = f"e2e-prometheus-{secrets.token_hex(3)}"
    webhook = f"{namespace}-blocked"
    scenario = Scenario(control_plane, kubectl, namespace, work)
    prometheus: Prometheus | None = None
    try:
        kubectl("create", "namespace", namespace)
        kubectl("label", "namespace", namespace, "rlhf.io/e2e=true")
        # An admission webhook nobody serves guards blocked's RayJob: the API server answers 500.
        kubectl.apply(unreachable_webhook(webhook, namespace, "blocked"))

        operator_port, trainer_port = free_port(), free_port()
        scenario.start_operator(operator_port)
        stage("operator healthy")
        chart = render_chart(control_plane, work / "helm")
        trainer_pod = {  # ppo-live's head pod, as the operator renders it
            "__meta_kubernetes_namespace": namespace,
            "__meta_kubernetes_pod_label_rlhf_io_job": "ppo-live",
        }
        jobs = scraping_like_the_chart(
            chart, f"127.0.0.1:{operator_port}", f"127.0.0.1:{trainer_port}", trainer_pod
        )
        rules = chartlib.find(chart, "PrometheusRule")["spec"]["groups"]
        prometheus = Prometheus(work / "prometheus", jobs, rules)
        prometheus.start()
        stage("prometheus ready")

        checkpoints = work / "checkpoints"
        unplaceable = {
            **tiny_ppo_job("x", demo, checkpoints)["spec"]["models"],
            "actor": {"model": "/m", "gpus": 12},
        }
        unplaceable_batches = {
            "rolloutBatchSize": 48,
            "trainBatchSize": 96,
            "microBatchSize": 8,
            "maxSteps": 5,
        }
        for job in (
            tiny_ppo_job("ppo-live", demo, checkpoints),
            tiny_ppo_job("stalled", demo, checkpoints),
            # Batch sizes that 12 data-parallel actor workers divide: the API server accepts it.
            tiny_ppo_job("broken", demo, checkpoints, models=unplaceable, training=unplaceable_batches),
            tiny_ppo_job("blocked", demo, checkpoints),
        ):
            kubectl.apply(job, namespace=namespace)

        # ppo-live: Prometheus sees attempt 0, attempt 0 fails, the operator restarts it, it runs.
        attempt_0 = f'rlhf_job_attempt{{namespace="{namespace}", job="ppo-live"}} == 0'
        eventually(lambda: prometheus.query(attempt_0), 30, "Prometheus to scrape ppo-live at attempt 0")
        scenario.set_rayjob_status(
            "ppo-live-a0",
            jobDeploymentStatus="Failed",
            jobStatus="FAILED",
            reason="AppFailed",
            message="the trainer exited with code 1",
        )
        scenario.set_rayjob_status("ppo-live-a1", jobDeploymentStatus="Running", jobStatus="RUNNING")
        scenario.wait_phase("ppo-live", "Running")
        stage("ppo-live restarted and running")

        # stalled: running, and its trainer last reported long ago.
        scenario.set_rayjob_status("stalled-a0", jobDeploymentStatus="Running", jobStatus="RUNNING")
        scenario.wait_phase("stalled", "Running")
        scenario.report_long_ago("stalled", STALLED_FOR_S)
        scenario.wait_phase("broken", "Failed")
        stage("stalled running, broken failed")

        trainer = scenario.start_trainer("ppo-live", trainer_port)

        def all_queries_have_data() -> bool:
            if trainer.poll() is not None:
                log = scenario.trainer_log.read_text()[-4000:]
                raise AssertionError(f"the trainer exited {trainer.returncode}:\n{log}")
            return all(query_has_data(prometheus, expr) for _, expr in QUERIES)

        eventually(all_queries_have_data, READY_TIMEOUT_S, "every dashboard query to have data", interval=2)
        stage("every dashboard query has data")
        yield Stack(prometheus, namespace, scenario.operator_log, scenario.trainer_log)
    finally:
        scenario.stop_all()
        if prometheus is not None:
            prometheus.stop()
        kubectl("delete", "validatingwebhookconfiguration", webhook, "--ignore-not-found", check=False)
        kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)


def unreachable_webhook(name: str, namespace: str, job: str) -> dict[str, Any]:
    """A validating webhook on the creation of `job`'s RayJobs whose server does not exist."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "blocked.rlhf.e2e",
                "clientConfig": {"url": "https://127.0.0.1:1/validate"},
                "rules": [
                    {
                        "apiGroups": ["ray.io"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["rayjobs"],
                    }
                ],  # fmt: skip
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "objectSelector": {"matchLabels": {"rlhf.io/job": job}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 2,
            }
        ],
    }


def labels_of(samples: list[dict[str, Any]], *names: str) -> set[tuple[str, ...]]:
    return {tuple(sample["metric"].get(name, "") for name in names) for sample in samples}


def test_promtool_accepts_the_chart_rules(stack: Stack) -> None:
    proc = subprocess.run(
        [str(prometheus_binary("promtool")), "check", "rules", str(stack.prometheus.rules_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 rules found" in proc.stdout, proc.stdout


def query_has_data(prometheus: Any, expr: str) -> bool:
    """Finite values, and ppo-live's series where the query keeps the job label (the other jobs'
    series exist before ppo-live's trainer has reported its first step)."""
    samples = prometheus.query(chartlib.substitute_grafana_variables(expr))
    if not finite_values(samples):
        return False
    return "job" not in chartlib.grouping_labels(expr) or ("ppo-live",) in labels_of(samples, "job")


@pytest.mark.parametrize("where,expr", QUERIES, ids=[where for where, _ in QUERIES])
def test_dashboard_query_returns_data(stack: Stack, where: str, expr: str) -> None:
    samples = stack.prometheus.query(chartlib.substitute_grafana_variables(expr))
    assert finite_values(samples), f"{where}: {expr} -> {samples}"
    if "job" in chartlib.grouping_labels(expr):
        # The series carry the RLHF job's `job` label (the operator's honoured, the trainer's from its pod).
        assert ("ppo-live",) in labels_of(samples, "job"), f"{where}: {samples}"


@pytest.mark.parametrize("name,selector", VARIABLES, ids=[name for name, _ in VARIABLES])
def test_dashboard_variable_lists_the_jobs(stack: Stack, name: str, selector: str) -> None:
    samples = stack.prometheus.query(chartlib.substitute_grafana_variables(selector))
    if name == "namespace":
        assert stack.namespace in {s for (s,) in labels_of(samples, "namespace")}
    else:
        assert {"ppo-live", "stalled", "broken", "blocked"} <= {s for (s,) in labels_of(samples, "job")}


@pytest.mark.parametrize(
    "alert,expected",
    [
        ("RLHFJobFailed", {"broken"}),
        ("RLHFJobStalled", {"stalled"}),
        ("RLHFJobRestarted", {"ppo-live"}),
    ],
)
def test_job_alert_expression_holds_for_exactly_its_job(stack: Stack, alert: str, expected: set[str]) -> None:
    rules = {
        rule["alert"]: rule["expr"]
        for group in yaml.safe_load(stack.prometheus.rules_file.read_text())["groups"]
        for rule in group["rules"]
    }
    samples = stack.prometheus.query(rules[alert])  # the whole expression, the chart's threshold included
    assert labels_of(samples, "namespace", "job") == {(stack.namespace, job) for job in expected}, samples


def test_reconcile_error_alert_expression_holds(stack: Stack) -> None:
    rules = {
        rule["alert"]: rule["expr"]
        for group in yaml.safe_load(stack.prometheus.rules_file.read_text())["groups"]
        for rule in group["rules"]
    }
    samples = stack.prometheus.query(rules["RLHFOperatorReconcileErrors"])
    assert samples and all(float(s["value"][1]) > 0 for s in samples), (
        f"{samples}\n{stack.prometheus.query('rlhf_operator_reconcile_errors_total')}\n"
        f"operator log:\n{stack.operator_log.read_text()[-5000:]}"
    )
    assert all(s["metric"].get("handler") for s in samples), samples


def test_prometheus_fires_every_chart_alert(stack: Stack) -> None:
    expected = {"RLHFJobFailed", "RLHFJobStalled", "RLHFJobRestarted", "RLHFOperatorReconcileErrors"}
    firing = eventually(
        lambda: (
            expected <= {a["labels"]["alertname"] for a in stack.prometheus.firing_alerts()}
            and stack.prometheus.firing_alerts()
        ),
        30,
        "the four alerts to fire",
    )
    jobs = {(a["labels"]["alertname"], a["labels"].get("job")) for a in firing}
    assert ("RLHFJobStalled", "stalled") in jobs
    assert ("RLHFJobStalled", "ppo-live") not in jobs  # it reports every step
    # The annotations template against the alert's labels.
    failed = next(a for a in firing if a["labels"]["alertname"] == "RLHFJobFailed")
    assert failed["annotations"]["summary"] == f"RLHFJob {stack.namespace}/broken failed"
