"""Unit tests of the status pieces: the throttle, the patch body, the ETA and the Kubernetes
sink's decisions (against a recording stand-in for CustomObjectsApi; the real API server test is
e2e/test_trainer_status_sink.py)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from rlhf_trainer.api.status import OPERATOR_FIELDS, TRAINER_FIELDS
from rlhf_trainer.telemetry.sinks import MERGE_PATCH, KubernetesStatusSink
from rlhf_trainer.telemetry.status import (
    add_checkpoint,
    eta_seconds,
    progress,
    should_push,
    trainer_status,
)


def test_should_push_throttles_to_one_patch_per_interval() -> None:
    assert should_push(now=100.0, last_push=None, min_interval_s=10, force=False)  # first
    assert not should_push(now=105.0, last_push=100.0, min_interval_s=10, force=False)
    assert should_push(now=105.0, last_push=100.0, min_interval_s=10, force=True)
    assert should_push(now=110.0, last_push=100.0, min_interval_s=10, force=False)


def test_eta_is_the_mean_step_time_times_steps_left() -> None:
    assert eta_seconds([], 0, 10) is None
    assert eta_seconds([2.0, 4.0], 2, 10) == 24.0
    assert eta_seconds([2.0], 12, 10) == 0.0


def test_progress_fields() -> None:
    fields = progress(step=3, total_steps=8, eta=12.345, reward=float("nan"), now=0.0)
    assert fields == {
        "step": 3,
        "totalSteps": 8,
        "percent": 37.5,
        "etaSeconds": 12.3,
        "updatedAt": "1970-01-01T00:00:00Z",
        "summary": "3/8",
    }


def test_status_body_holds_only_trainer_fields_and_no_empty_lists() -> None:
    body = trainer_status(None, {"reward/mean": 1.0, "kl/mean": float("inf")}, [])
    assert body == {"metrics": {"reward/mean": 1.0}}
    entry = {"step": 1, "path": "/c/1"}
    full = trainer_status(progress(1, 2, None, 1.0, 0.0), {"reward/mean": 1.0}, [entry])
    # failure is written only on an error, resume only when an attempt resumes
    assert set(full) == set(TRAINER_FIELDS) - {"failure", "resume"}
    assert not set(full) & set(OPERATOR_FIELDS)


def test_add_checkpoint_keeps_last_k_and_replaces_later_steps_of_a_failed_attempt() -> None:
    entries = [{"step": s, "path": f"/c/{s}"} for s in (1, 2, 3)]
    assert [c["step"] for c in add_checkpoint(entries, {"step": 4, "path": "/c/4"}, keep=2)] == [3, 4]
    assert add_checkpoint(entries, {"step": 2, "path": "/c/2b"}, keep=5) == [
        entries[0],
        {"step": 2, "path": "/c/2b"},
    ]


class RecordingApi:
    """Stands in for CustomObjectsApi: records patches, fails on demand."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.fail_with: Exception | None = None

    def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body, **kw):  # noqa: ANN001
        if self.fail_with is not None:
            raise self.fail_with
        self.patches.append({"target": (group, version, namespace, plural, name), "body": body, **kw})
        return body


@pytest.fixture
def sink() -> tuple[KubernetesStatusSink, RecordingApi]:
    kube_sink = KubernetesStatusSink("team-a", "tiny", min_interval_s=3600, api_client=object())
    api = RecordingApi()
    kube_sink.api = api  # type: ignore[assignment]
    return kube_sink, api


def test_kubernetes_sink_sends_a_merge_patch_of_trainer_fields(
    sink: tuple[KubernetesStatusSink, RecordingApi],
) -> None:
    kube_sink, api = sink
    kube_sink.update({"progress": {"step": 1}, "metrics": {"reward/mean": 0.5}, "phase": "Running"})
    (patch,) = api.patches
    assert patch["target"] == ("rlhf.io", "v1alpha1", "team-a", "rlhfjobs", "tiny")
    assert patch["body"] == {"status": {"progress": {"step": 1}, "metrics": {"reward/mean": 0.5}}}
    assert patch["_content_type"] == MERGE_PATCH == "application/merge-patch+json"


def test_kubernetes_sink_throttles_and_flushes_the_latest(
    sink: tuple[KubernetesStatusSink, RecordingApi],
) -> None:
    kube_sink, api = sink
    for step in (1, 2, 3):
        kube_sink.update({"progress": {"step": step}})
    assert [p["body"]["status"]["progress"]["step"] for p in api.patches] == [1]
    kube_sink.update({"progress": {"step": 4}}, force=True)  # e.g. a checkpoint
    kube_sink.update({"progress": {"step": 5}})
    kube_sink.flush()
    kube_sink.flush()  # nothing pending: no second patch
    assert [p["body"]["status"]["progress"]["step"] for p in api.patches] == [1, 4, 5]


def test_kubernetes_sink_survives_errors_and_reports_403_once(
    sink: tuple[KubernetesStatusSink, RecordingApi], caplog: pytest.LogCaptureFixture
) -> None:
    kube_sink, api = sink
    api.fail_with = ApiException(status=403, reason="Forbidden")
    with caplog.at_level(logging.DEBUG, logger="rlhf_trainer.telemetry.sinks"):
        kube_sink.update({"progress": {"step": 1}}, force=True)
        kube_sink.update({"progress": {"step": 2}}, force=True)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "HTTP 403" in errors[0].getMessage() and "rlhfjobs/status for 'tiny'" in errors[0].getMessage()
    api.fail_with = ConnectionResetError("peer went away")
    kube_sink.update({"progress": {"step": 3}}, force=True)
    api.fail_with = None
    kube_sink.flush()  # the update that failed is still pending
    assert [p["body"]["status"]["progress"]["step"] for p in api.patches] == [3]


def test_failure_entry_is_bounded_and_wire_shaped() -> None:
    from rlhf_trainer.telemetry.status import MAX_FAILURE_MESSAGE, failure_entry

    entry = failure_entry(attempt=2, permanent=True, reason="PreflightFailed", message="x" * 5000)
    assert entry["attempt"] == 2 and entry["permanent"] is True and entry["reason"] == "PreflightFailed"
    assert len(entry["message"]) == MAX_FAILURE_MESSAGE and entry["message"].endswith("...")
    assert "failure" in TRAINER_FIELDS


def test_record_failure_keeps_the_status_already_written(tmp_path) -> None:
    """A failure after some steps keeps their progress and checkpoints in status.json."""
    import json

    from rlhf_trainer.telemetry.sinks import FileStatusSink
    from rlhf_trainer.telemetry.telemetry import record_failure_in, sink_from_raw_config

    path = tmp_path / "status.json"
    FileStatusSink(str(path)).update({"progress": {"step": 3}})
    record_failure_in(FileStatusSink(str(path)), 1, permanent=False, reason="TrainingFailed", message="boom")
    stored = json.loads(path.read_text())
    assert stored["progress"] == {"step": 3}
    assert stored["failure"] == {
        "attempt": 1,
        "permanent": False,
        "reason": "TrainingFailed",
        "message": "boom",
    }

    located = sink_from_raw_config(
        {"jobName": "j", "statusSink": "file", "outputDir": str(tmp_path), "attempt": 4}
    )
    assert located is not None and isinstance(located[0], FileStatusSink) and located[1] == 4
    assert sink_from_raw_config({"spec": {}}) is None
