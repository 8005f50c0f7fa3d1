"""Training telemetry: metrics.jsonl, progress, Prometheus gauges, RLHFJob status, curves PNG."""

from .keys import METRIC_KEYS, TIMING_PHASES, metric_names, prometheus_name
from .prometheus import TelemetryError
from .sinks import FileStatusSink, KubernetesStatusSink, NullStatusSink, StatusSink
from .telemetry import Telemetry, make_status_sink

__all__ = [
    "METRIC_KEYS",
    "TIMING_PHASES",
    "FileStatusSink",
    "KubernetesStatusSink",
    "NullStatusSink",
    "StatusSink",
    "Telemetry",
    "TelemetryError",
    "make_status_sink",
    "metric_names",
    "prometheus_name",
]
