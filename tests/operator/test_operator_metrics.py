"""The operator's Prometheus metrics: contract names, status mirroring, series removed on delete."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from rlhf_operator.metrics import OperatorMetrics, metric_names

CONTRACT = [
    "rlhf_operator_jobs",
    "rlhf_operator_reconcile_duration_seconds",
    "rlhf_operator_reconcile_errors_total",
    "rlhf_operator_restarts_total",
    "rlhf_job_info",
    "rlhf_job_step",
    "rlhf_job_total_steps",
    "rlhf_job_progress_ratio",
    "rlhf_job_reward_mean",
    "rlhf_job_kl_mean",
    "rlhf_job_response_length_mean",
    "rlhf_job_attempt",
    "rlhf_job_last_progress_timestamp_seconds",
]


def job(name="j1", phase="Running", **status):
    return {
        "metadata": {"namespace": "ns", "name": name},
        "spec": {"algorithm": {"name": "grpo"}},
        "status": {"phase": phase, **status},
    }


def value(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


def test_metric_names_are_the_contract_names():
    names = metric_names()
    assert set(CONTRACT) <= set(names)
    assert set(names) - set(CONTRACT) == {
        "rlhf_operator_reconcile_duration_seconds_bucket",
        "rlhf_operator_reconcile_duration_seconds_sum",
        "rlhf_operator_reconcile_duration_seconds_count",
    }


def test_job_status_is_mirrored_with_bounded_labels():
    metrics = OperatorMetrics()
    metrics.observe_job(
        job(
            attempt=1,
            progress={"step": 30, "totalSteps": 120, "updatedAt": "2025-03-01T12:00:00Z"},
            metrics={
                "reward/mean": 0.75,
                "kl/mean": 0.01,
                "response_length/mean": 312.0,
                "actor/pg_loss": 0.1,
            },
        )
    )
    labels = {"namespace": "ns", "job": "j1", "algorithm": "grpo"}
    assert value(metrics, "rlhf_job_info", **labels, phase="Running") == 1
    assert value(metrics, "rlhf_job_step", **labels) == 30
    assert value(metrics, "rlhf_job_total_steps", **labels) == 120
    assert value(metrics, "rlhf_job_progress_ratio", **labels) == 0.25
    assert value(metrics, "rlhf_job_reward_mean", **labels) == 0.75
    assert value(metrics, "rlhf_job_kl_mean", **labels) == 0.01
    assert value(metrics, "rlhf_job_response_length_mean", **labels) == 312.0
    assert value(metrics, "rlhf_job_attempt", **labels) == 1
    assert value(metrics, "rlhf_job_last_progress_timestamp_seconds", **labels) == 1740830400.0
    assert value(metrics, "rlhf_operator_jobs", phase="Running") == 1
    assert value(metrics, "rlhf_operator_jobs", phase="Pending") == 0


def test_a_phase_change_moves_the_info_series_and_the_phase_counts():
    metrics = OperatorMetrics()
    metrics.observe_job(job(phase="Running"))
    metrics.observe_job(job(name="j2", phase="Running"))
    metrics.observe_job(job(phase="Succeeded"))
    labels = {"namespace": "ns", "job": "j1", "algorithm": "grpo"}
    assert value(metrics, "rlhf_job_info", **labels, phase="Running") is None
    assert value(metrics, "rlhf_job_info", **labels, phase="Succeeded") == 1
    assert value(metrics, "rlhf_operator_jobs", phase="Running") == 1
    assert value(metrics, "rlhf_operator_jobs", phase="Succeeded") == 1


def test_a_deleted_jobs_series_are_removed():
    metrics = OperatorMetrics()
    metrics.observe_job(job(progress={"step": 1, "totalSteps": 2}, metrics={"reward/mean": 0.5}))
    metrics.restarted("ns", "j1")
    metrics.forget_job("ns", "j1")
    text = generate_latest(metrics.registry).decode()
    assert 'job="j1"' not in text
    assert value(metrics, "rlhf_operator_jobs", phase="Running") == 0


def test_reconcile_timing_and_errors_are_counted_by_handler():
    metrics = OperatorMetrics()
    with metrics.reconciling("create"):
        pass
    with pytest.raises(RuntimeError), metrics.reconciling("rayjob"):
        raise RuntimeError("boom")
    assert value(metrics, "rlhf_operator_reconcile_duration_seconds_count", handler="create") == 1
    assert value(metrics, "rlhf_operator_reconcile_errors_total", handler="rayjob") == 1
    assert value(metrics, "rlhf_operator_reconcile_errors_total", handler="create") is None
