"""Prometheus (Debian's) scraping the node's pods the way the Prometheus Operator would: the chart's
PodMonitor and ServiceMonitor (helm template with podMonitor/serviceMonitor enabled) become scrape
configs with Kubernetes service discovery against the e2e API server, with the relabeling the
Prometheus Operator generates (selector, port name) followed by the monitor's own relabelings.
The host reaches pod IPs over the node's bridge, as a Prometheus pod would over the pod network.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from e2e_kube import ControlPlane
from prometheus_server import Prometheus

CHART = Path(__file__).resolve().parent.parent / "helm" / "rlhf-operator"


def _label(name: str) -> str:
    """A Kubernetes label name as service discovery spells it in __meta_* labels."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _relabelings(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return [{names.get(k, k): v for k, v in item.items()} for item in items or []]


def _selector(selector: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    rules = [
        {"source_labels": [f"__meta_kubernetes_{kind}_label_{_label(k)}"], "regex": v, "action": "keep"}
        for k, v in (selector.get("matchLabels") or {}).items()
    ]
    for expr in selector.get("matchExpressions") or []:
        if expr["operator"] != "Exists":
            raise ValueError(f"matchExpressions operator {expr['operator']} is not translated here")
        present = f"__meta_kubernetes_{kind}_labelpresent_{_label(expr['key'])}"
        rules.append({"source_labels": [present], "regex": "true", "action": "keep"})
    return rules


def scrape_configs(monitors: list[dict[str, Any]], sd: dict[str, Any]) -> list[dict[str, Any]]:
    """PodMonitors and ServiceMonitors -> Prometheus scrape_configs (one per endpoint)."""
    configs = []
    for monitor in monitors:
        spec, meta = monitor["spec"], monitor["metadata"]
        pod = monitor["kind"] == "PodMonitor"
        namespaces = spec.get("namespaceSelector") or {}
        discovery = {**sd, "role": "pod" if pod else "endpoints"}
        if namespaces.get("matchNames"):
            discovery["namespaces"] = {"names": namespaces["matchNames"]}
        endpoints = spec["podMetricsEndpoints"] if pod else spec["endpoints"]
        for index, endpoint in enumerate(endpoints):
            port_label = (
                "__meta_kubernetes_pod_container_port_name" if pod else "__meta_kubernetes_endpoint_port_name"
            )
            relabel = _selector(spec["selector"], "pod" if pod else "service")
            relabel.append({"source_labels": [port_label], "regex": endpoint["port"], "action": "keep"})
            relabel.append({"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"})
            relabel.append({"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"})
            relabel += _relabelings(endpoint.get("relabelings"))
            configs.append(
                {
                    "job_name": f"{monitor['kind']}/{meta['namespace']}/{meta['name']}/{index}",
                    "honor_labels": bool(endpoint.get("honorLabels")),
                    "metrics_path": endpoint.get("path", "/metrics"),
                    "kubernetes_sd_configs": [discovery],
                    "relabel_configs": relabel,
                }
            )
    return configs


def chart_monitors(helm: Path, release: str, namespace: str) -> list[dict[str, Any]]:
    """The PodMonitor and ServiceMonitor the chart renders when they are enabled."""
    out = subprocess.run(
        [str(helm), "template", release, str(CHART), f"--namespace={namespace}"]
        + ["--set=podMonitor.enabled=true", "--set=serviceMonitor.enabled=true"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    return [d for d in docs if d["kind"] in ("PodMonitor", "ServiceMonitor")]


def node_prometheus(workdir: Path, control_plane: ControlPlane, release: str, namespace: str) -> Prometheus:
    """A Prometheus (not started) whose scrape configs are the chart's monitors, discovering
    through the API server with the admin client certificate; scrapes every second."""
    pki = control_plane.ca_file.parent
    sd = {
        "api_server": control_plane.server,
        "tls_config": {
            "ca_file": str(control_plane.ca_file),
            "cert_file": str(pki / "admin.crt"),
            "key_file": str(pki / "admin.key"),
        },
    }
    server = Prometheus(workdir, jobs=[], rule_groups=[])
    config = yaml.safe_load(server.config_file.read_text())
    config["scrape_configs"] = scrape_configs(
        chart_monitors(control_plane.bin("helm"), release, namespace), sd
    )
    server.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return server
