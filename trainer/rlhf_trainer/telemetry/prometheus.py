"""The trainer's Prometheus gauges, on their own registry and HTTP server."""

from __future__ import annotations

import math
import re
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from .keys import LABELS, METRIC_KEYS, SOURCE_REWARD_GAUGE, STEP_GAUGE, TOTAL_STEPS_GAUGE, prometheus_name

_VALID_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


class TelemetryError(RuntimeError):
    pass


class PrometheusExporter:
    """Gauges labelled {namespace, job, algorithm}. Every contract gauge exists from the start
    (NaN until its first step), so /metrics lists them before the first step ends and a metric
    the algorithm does not produce (critic/vf_loss under grpo) reads NaN rather than 0."""

    def __init__(self, namespace: str, job: str, algorithm: str, reward_sources: list[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._labels = {"namespace": namespace, "job": job, "algorithm": algorithm}
        self._gauges: dict[str, Any] = {}
        self._reward_sources = set(reward_sources)
        for key in METRIC_KEYS:
            self._gauge(key, f"Trainer metric {key} of the latest step.")
        self._step = self._new(STEP_GAUGE, "RL steps completed.")
        self._total = self._new(TOTAL_STEPS_GAUGE, "RL steps planned.")
        source_gauge = Gauge(
            SOURCE_REWARD_GAUGE,
            "Mean unweighted reward of one reward source in the latest step.",
            [*LABELS, "source"],
            registry=self.registry,
        )
        self._source = {name: source_gauge.labels(**self._labels, source=name) for name in reward_sources}
        for child in self._source.values():
            child.set(math.nan)
        self._server: Any = None

    def _new(self, name: str, doc: str) -> Any:
        child = Gauge(name, doc, list(LABELS), registry=self.registry).labels(**self._labels)
        child.set(math.nan)
        return child

    def _gauge(self, key: str, doc: str) -> Any | None:
        if key not in self._gauges:
            name = prometheus_name(key)
            if not _VALID_NAME.match(name):
                return None
            self._gauges[key] = self._new(name, doc)
        return self._gauges[key]

    def serve(self, port: int) -> None:
        try:
            self._server, _ = start_http_server(port, registry=self.registry)
        except OSError as exc:
            raise TelemetryError(f"metricsPort {port}: cannot serve /metrics: {exc}") from exc

    def update(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        self._step.set(step)
        self._total.set(total_steps)
        for key, value in metrics.items():
            source = key.split("/", 1)[1] if key.startswith("reward/") else None
            if source in self._reward_sources:
                self._source[source].set(value)
                continue
            # Keys beyond the contract (e.g. actor/lr) become gauges too, the first time they appear.
            gauge = self._gauge(key, f"Trainer metric {key} of the latest step.")
            if gauge is not None:
                gauge.set(value)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
