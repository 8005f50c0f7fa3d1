"""Prometheus (Debian's) scraping the node's pods the way the Prometheus Operator would: the chart's
PodMonitor and ServiceMonitor (helm template with podMonitor/serviceMonitor enabled) become scrape
configs with the relabeling the Prometheus Operator generates (selector, port name) followed by
the monitor's own relabelings. Debian builds Prometheus without Kubernetes service discovery, so
`Discovery` stands in for it: it lists the pods and EndpointSlices with kubectl and writes file_sd
targets carrying the same __meta_kubernetes_* labels that discovery would give them. The host
reaches pod IPs over the node's bridge, as a Prometheus pod would over the pod network.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from e2e_kube import ControlPlane, Kubectl
from node_workloads import OPERATOR_NAMESPACE, RELEASE
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


def scrape_configs(monitors: list[dict[str, Any]], sd_dir: Path) -> list[dict[str, Any]]:
    """PodMonitors and ServiceMonitors -> Prometheus scrape_configs (one per endpoint), discovering
    from the files `Discovery` writes (pods.json, endpoints.json)."""
    configs = []
    for monitor in monitors:
        spec, meta = monitor["spec"], monitor["metadata"]
        pod = monitor["kind"] == "PodMonitor"
        namespaces = (spec.get("namespaceSelector") or {}).get("matchNames")
        discovery = {
            "files": [str(sd_dir / ("pods.json" if pod else "endpoints.json"))],
            "refresh_interval": "1s",
        }
        endpoints = spec["podMetricsEndpoints"] if pod else spec["endpoints"]
        for index, endpoint in enumerate(endpoints):
            port_label = (
                "__meta_kubernetes_pod_container_port_name" if pod else "__meta_kubernetes_endpoint_port_name"
            )
            relabel = _selector(spec["selector"], "pod" if pod else "service")
            if namespaces:
                relabel.insert(
                    0,
                    {
                        "source_labels": ["__meta_kubernetes_namespace"],
                        "regex": "|".join(namespaces),
                        "action": "keep",
                    },
                )
            relabel.append({"source_labels": [port_label], "regex": endpoint["port"], "action": "keep"})
            relabel.append({"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"})
            relabel.append({"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"})
            relabel += _relabelings(endpoint.get("relabelings"))
            configs.append(
                {
                    "job_name": f"{monitor['kind']}/{meta['namespace']}/{meta['name']}/{index}",
                    "honor_labels": bool(endpoint.get("honorLabels")),
                    "metrics_path": endpoint.get("path", "/metrics"),
                    "file_sd_configs": [discovery],
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


class Discovery:
    """Kubernetes service discovery's pod and endpoints roles, as file_sd target files."""

    def __init__(self, kubectl: Kubectl, sd_dir: Path):
        self.kubectl, self.sd_dir = kubectl, sd_dir
        sd_dir.mkdir(parents=True, exist_ok=True)

    def refresh(self) -> None:
        pods = self.kubectl.json("get", "pods", "--all-namespaces")["items"]
        slices = self.kubectl.json("get", "endpointslices", "--all-namespaces")["items"]
        services = {
            (s["metadata"]["namespace"], s["metadata"]["name"]): s
            for s in self.kubectl.json("get", "services", "--all-namespaces")["items"]
        }
        self._write("pods.json", [t for pod in pods for t in _pod_targets(pod)])
        self._write("endpoints.json", [t for eps in slices for t in _slice_targets(eps, services)])

    def _write(self, name: str, targets: list[dict[str, Any]]) -> None:
        staging = self.sd_dir / f".{name}"
        staging.write_text(json.dumps(targets))
        staging.rename(self.sd_dir / name)  # atomically: Prometheus may read it at any time


def _labels(kind: str, labels: dict[str, str]) -> dict[str, str]:
    out = {f"__meta_kubernetes_{kind}_label_{_label(k)}": v for k, v in labels.items()}
    out.update({f"__meta_kubernetes_{kind}_labelpresent_{_label(k)}": "true" for k in labels})
    return out


def _pod_targets(pod: dict[str, Any]) -> list[dict[str, Any]]:
    ip, meta = pod["status"].get("podIP"), pod["metadata"]
    if not ip or pod["status"].get("phase") != "Running":
        return []
    base = {
        "__meta_kubernetes_namespace": meta["namespace"],
        "__meta_kubernetes_pod_name": meta["name"],
        **_labels("pod", meta.get("labels") or {}),
    }
    return [
        {
            "targets": [f"{ip}:{port['containerPort']}"],
            "labels": {**base, "__meta_kubernetes_pod_container_port_name": port.get("name", "")},
        }
        for container in pod["spec"]["containers"]
        for port in container.get("ports") or []
    ]


def _slice_targets(
    eps: dict[str, Any], services: dict[tuple[str, str], dict[str, Any]]
) -> list[dict[str, Any]]:
    meta = eps["metadata"]
    service = services.get(
        (meta["namespace"], (meta.get("labels") or {}).get("kubernetes.io/service-name", ""))
    )
    if service is None:
        return []
    base = {
        "__meta_kubernetes_namespace": meta["namespace"],
        **_labels("service", service["metadata"].get("labels") or {}),
    }
    targets = []
    for endpoint in eps.get("endpoints") or []:
        pod = (endpoint.get("targetRef") or {}).get("name", "")
        for address in endpoint["addresses"]:
            for port in eps.get("ports") or []:
                labels = {**base, "__meta_kubernetes_endpoint_port_name": port.get("name", "")}
                labels["__meta_kubernetes_pod_name"] = pod
                targets.append({"targets": [f"{address}:{port['port']}"], "labels": labels})
    return targets


def node_prometheus(
    workdir: Path, control_plane: ControlPlane, kubectl: Kubectl
) -> tuple[Prometheus, Discovery]:
    """A Prometheus (not started) whose scrape configs are the chart's monitors, and the
    discovery that feeds it (call refresh() before start and whenever pods change)."""
    discovery = Discovery(kubectl, workdir / "sd")
    discovery.refresh()
    server = Prometheus(workdir, jobs=[], rule_groups=[])
    config = yaml.safe_load(server.config_file.read_text())
    monitors = chart_monitors(control_plane.bin("helm"), RELEASE, OPERATOR_NAMESPACE)
    config["scrape_configs"] = scrape_configs(monitors, discovery.sd_dir)
    server.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return server, discovery
