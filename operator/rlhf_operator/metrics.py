"""The operator's Prometheus metrics (names are a contract: DESIGN "Telemetry", /metrics on 8080).

Operator health: rlhf_operator_jobs{phase}, rlhf_operator_reconcile_duration_seconds{handler},
rlhf_operator_reconcile_errors_total{handler}, rlhf_operator_restarts_total{namespace, job}.
Jobs, mirrored from each RLHFJob's status with bounded labels {namespace, job, algorithm}:
rlhf_job_info (+phase), rlhf_job_step, rlhf_job_total_steps, rlhf_job_progress_ratio,
rlhf_job_reward_mean, rlhf_job_kl_mean, rlhf_job_response_length_mean, rlhf_job_attempt,
rlhf_job_last_progress_timestamp_seconds. The series of a deleted job are removed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rlhf_trainer.api.status import PHASES

JOB_LABELS = ("namespace", "job", "algorithm")
# rlhf_job_<name> <- status.metrics[<key>]
MIRRORED_METRICS = {
    "reward_mean": "reward/mean",
    "kl_mean": "kl/mean",
    "response_length_mean": "response_length/mean",
}
NO_PHASE = "Pending"  # a job the operator has not written a phase for yet


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.jobs = Gauge(
            "rlhf_operator_jobs", "RLHFJobs by phase (all watched namespaces).", ["phase"], registry=r
        )
        self.reconcile_duration = Histogram(
            "rlhf_operator_reconcile_duration_seconds",
            "Time of one reconcile, by the handler that ran it.",
            ["handler"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.reconcile_errors = Counter(
            "rlhf_operator_reconcile_errors_total",
            "Reconciles that raised, by handler.",
            ["handler"],
            registry=r,
        )
        self.restarts = Counter(
            "rlhf_operator_restarts_total",
            "RayJobs created to restart a failed attempt (attempts after the first).",
            ["namespace", "job"],
            registry=r,
        )
        self.info = Gauge(
            "rlhf_job_info", "1 per RLHFJob; phase is the current one.", [*JOB_LABELS, "phase"], registry=r
        )
        self.step = Gauge(
            "rlhf_job_step", "RL steps completed (status.progress.step).", JOB_LABELS, registry=r
        )
        self.total_steps = Gauge("rlhf_job_total_steps", "RL steps planned.", JOB_LABELS, registry=r)
        self.progress_ratio = Gauge(
            "rlhf_job_progress_ratio", "step / totalSteps (0..1).", JOB_LABELS, registry=r
        )
        self.mirrored = {
            name: Gauge(f"rlhf_job_{name}", f"Latest {key} reported by the trainer.", JOB_LABELS, registry=r)
            for name, key in MIRRORED_METRICS.items()
        }
        self.attempt = Gauge("rlhf_job_attempt", "Current attempt (0 first).", JOB_LABELS, registry=r)
        self.last_progress = Gauge(
            "rlhf_job_last_progress_timestamp_seconds",
            "When the trainer last reported progress (unix seconds; a stall alert watches it).",
            JOB_LABELS,
            registry=r,
        )
        self._jobs: dict[tuple[str, str], tuple[str, str]] = {}  # (namespace, job) -> (algorithm, phase)
        self._restarted: set[tuple[str, str]] = set()
        self._refresh_phase_counts()

    @contextmanager
    def reconciling(self, handler: str) -> Iterator[None]:
        """Time a reconcile; count it as an error when it raises."""
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            self.reconcile_errors.labels(handler).inc()
            raise
        finally:
            self.reconcile_duration.labels(handler).observe(time.perf_counter() - started)

    def restarted(self, namespace: str, job: str) -> None:
        self.restarts.labels(namespace, job).inc()
        self._restarted.add((namespace, job))

    def observe_job(self, body: dict[str, Any]) -> None:
        """Mirror one RLHFJob's status into the rlhf_job_* series."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        algorithm = str(((body.get("spec") or {}).get("algorithm") or {}).get("name", ""))
        status = body.get("status") or {}
        phase = status.get("phase") or NO_PHASE
        old = self._jobs.get(key)
        if old is not None and old != (algorithm, phase):
            self._remove_series(key, *old)
        self._jobs[key] = (algorithm, phase)
        labels = (*key, algorithm)
        self.info.labels(*labels, phase).set(1)
        self.attempt.labels(*labels).set(status.get("attempt") or 0)
        progress = status.get("progress") or {}
        if "step" in progress:
            self.step.labels(*labels).set(progress["step"])
        if progress.get("totalSteps"):
            self.total_steps.labels(*labels).set(progress["totalSteps"])
            self.progress_ratio.labels(*labels).set(
                min(1.0, progress.get("step", 0) / progress["totalSteps"])
            )
        updated = _unix_seconds(progress.get("updatedAt"))
        if updated is not None:
            self.last_progress.labels(*labels).set(updated)
        values = status.get("metrics") or {}
        for name, metric_key in MIRRORED_METRICS.items():
            if isinstance(values.get(metric_key), int | float):
                self.mirrored[name].labels(*labels).set(values[metric_key])
        self._refresh_phase_counts()

    def forget_job(self, namespace: str, job: str) -> None:
        """Drop every series of a deleted job."""
        old = self._jobs.pop((namespace, job), None)
        if old is not None:
            self._remove_series((namespace, job), *old)
        if (namespace, job) in self._restarted:
            self._restarted.discard((namespace, job))
            self.restarts.remove(namespace, job)
        self._refresh_phase_counts()

    def known_jobs(self) -> set[tuple[str, str]]:
        return set(self._jobs)

    def _remove_series(self, key: tuple[str, str], algorithm: str, phase: str) -> None:
        labels = (*key, algorithm)
        _remove(self.info, *labels, phase)
        for gauge in (self.step, self.total_steps, self.progress_ratio, self.attempt, self.last_progress):
            _remove(gauge, *labels)
        for gauge in self.mirrored.values():
            _remove(gauge, *labels)

    def _refresh_phase_counts(self) -> None:
        counts = dict.fromkeys(PHASES, 0)
        for _, phase in self._jobs.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            self.jobs.labels(phase).set(count)


def metric_names() -> list[str]:
    """Every series name the operator exposes (histograms: also _bucket, _sum, _count)."""
    names: list[str] = []
    for family in OperatorMetrics().registry.collect():
        if family.type == "counter":
            names.append(f"{family.name}_total")
        elif family.type == "histogram":
            names += [family.name, *(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))]
        else:
            names.append(family.name)
    return sorted(names)


def _remove(metric: Gauge, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass  # never set for this job


def _unix_seconds(stamp: Any) -> float | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
