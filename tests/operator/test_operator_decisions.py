"""Reconcile decisions (pure): create, follow KubeRay, restart from the latest checkpoint, fail,
apply or refuse spec edits, and stay idempotent across operator crashes."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest
import yaml
from operator_helpers import UID, example_doc

from rlhf_operator.decisions import RenderCache, Settings, diff_paths, plan_reconcile, recorded_spec
from rlhf_trainer.api.status import OPERATOR_FIELDS

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
CLOCK = "2025-03-01T12:00:00Z"
SETTINGS = Settings(default_image="img:1")
CHECKPOINT = {"step": 40, "path": "/checkpoints/step-40", "time": "2025-03-01T11:00:00Z"}


def job_body(stem="grpo-qwen2.5-7b-math", status=None, generation=1, **spec_changes):
    doc = example_doc(stem)
    doc["metadata"].update({"namespace": "team-a", "uid": UID, "generation": generation})
    doc["spec"].update(spec_changes)
    if status is not None:
        doc["status"] = status
    return doc


def plan(body, rayjobs=(), recorded=None, cache=None):
    """`recorded`: the plan whose trainer ConfigMap holds the spec the RayJobs were rendered from."""
    reads = []

    def read_recorded():
        reads.append(1)
        return recorded_spec(recorded.config_map) if recorded is not None else None

    result = plan_reconcile(body, list(rayjobs), SETTINGS, NOW, read_recorded=read_recorded, cache=cache)
    assert set(result.status) <= set(OPERATOR_FIELDS), "the operator wrote a field it does not own"
    result.recorded_reads = len(reads)
    return result


def applied(body, result):
    """The job after the plan's status patch (a JSON merge patch)."""
    body = copy.deepcopy(body)
    status = body.setdefault("status", {})
    for key, value in result.status.items():
        if isinstance(value, dict) and isinstance(status.get(key), dict):
            merged = {**status[key], **value}
            status[key] = {k: v for k, v in merged.items() if v is not None}
        else:
            status[key] = value
    return body


def with_status(rayjob, **status):
    rayjob = copy.deepcopy(rayjob)
    rayjob["status"] = status
    return rayjob


def cond(result, kind):
    return next(c for c in result.status["conditions"] if c["type"] == kind)


def trainer_config(result):
    return yaml.safe_load(result.config_map["data"]["trainer.yaml"])


def test_a_new_job_gets_its_children_and_a_first_rayjob():
    result = plan(job_body())
    assert [o["kind"] for o in result.children] == [
        "ConfigMap",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
    ]
    assert result.create_rayjob["metadata"]["name"] == "grpo-qwen-math-a0"
    assert trainer_config(result)["attempt"] == 0 and "resumeFrom" not in trainer_config(result)
    assert result.status["phase"] == "Pending"
    assert result.status["attempt"] == 0
    assert result.status["rayJob"] == {"name": "grpo-qwen-math-a0"}
    assert result.status["observedGeneration"] == 1
    assert [(c["type"], c["status"]) for c in result.status["conditions"]] == [
        ("RayClusterReady", "False"),
        ("Running", "False"),
        ("Suspended", "False"),
    ]
    assert [(e.type, e.reason) for e in result.events] == [("Normal", "Pending")]


def test_a_running_rayjob_makes_the_job_running_once():
    body = job_body()
    first = plan(body)
    rayjob = with_status(
        first.create_rayjob,
        jobStatus="RUNNING",
        jobDeploymentStatus="Running",
        rayClusterName="grpo-qwen-math-a0-x1",
        dashboardURL="svc:8265",
    )
    body = applied(body, first)
    running = plan(body, [rayjob])
    assert running.create_rayjob is None and running.children == [] and running.patch_rayjob is None
    assert running.recorded_reads == 0  # the spec did not change: nothing to read back
    assert running.status["phase"] == "Running"
    assert running.status["startTime"] == CLOCK
    assert running.status["rayJob"] == {
        "name": "grpo-qwen-math-a0",
        "jobStatus": "RUNNING",
        "deploymentStatus": "Running",
        "rayClusterName": "grpo-qwen-math-a0-x1",
        "dashboardURL": "svc:8265",
    }
    assert cond(running, "RayClusterReady")["status"] == "True"
    assert cond(running, "Running")["status"] == "True"
    assert [(e.type, e.reason) for e in running.events] == [("Normal", "Running")]
    again = plan(applied(body, running), [rayjob])
    assert again.status == {} and again.events == [] and again.create_rayjob is None


def test_a_succeeded_rayjob_completes_the_job():
    body = job_body()
    first = plan(body)
    rayjob = with_status(
        first.create_rayjob,
        jobStatus="SUCCEEDED",
        jobDeploymentStatus="Complete",
        endTime="2025-03-01T11:59:00Z",
        startTime="2025-03-01T10:00:00Z",
    )
    done = plan(applied(body, first), [rayjob])
    assert done.status["phase"] == "Succeeded"
    assert done.status["completionTime"] == "2025-03-01T11:59:00Z"
    assert cond(done, "Succeeded")["status"] == "True"
    assert done.create_rayjob is None
    assert plan(applied(applied(body, first), done), [rayjob]).status == {}  # terminal: nothing more


def test_a_failure_with_backoff_left_restarts_from_the_latest_checkpoint():
    body = job_body(backoffLimit=1)
    first = plan(body)
    body = applied(body, first)
    body["status"]["latestCheckpoint"] = CHECKPOINT  # written by the trainer
    failed = with_status(
        first.create_rayjob,
        jobStatus="FAILED",
        jobDeploymentStatus="Failed",
        reason="AppFailed",
        message="exit code 1",
    )
    restart = plan(body, [failed])
    assert restart.create_rayjob["metadata"]["name"] == "grpo-qwen-math-a1"
    assert restart.create_rayjob["metadata"]["labels"]["rlhf.io/attempt"] == "1"
    assert trainer_config(restart)["attempt"] == 1
    assert trainer_config(restart)["resumeFrom"] == "/checkpoints/step-40"
    assert restart.status["phase"] == "Retrying"
    assert restart.status["attempt"] == 1
    assert restart.status["rayJob"] == {"name": "grpo-qwen-math-a1"}
    assert "AppFailed: exit code 1" in restart.status["message"]
    assert "/checkpoints/step-40" in restart.status["message"]
    assert [(e.type, e.reason) for e in restart.events] == [("Warning", "Retrying")]
    assert "progress" not in restart.status and "latestCheckpoint" not in restart.status

    body = applied(body, restart)
    second = with_status(restart.create_rayjob, jobStatus="", jobDeploymentStatus="Initializing")
    starting = plan(body, [failed, second])
    assert starting.create_rayjob is None
    assert "phase" not in starting.status  # still Retrying until the new attempt runs
    second = with_status(
        second, jobStatus="FAILED", jobDeploymentStatus="Failed", reason="AppFailed", message="exit code 2"
    )
    final = plan(applied(body, starting), [failed, second])
    assert final.create_rayjob is None
    assert final.status["phase"] == "Failed"
    assert final.status["message"] == "AppFailed: exit code 2"
    failed_condition = cond(final, "Failed")
    assert (failed_condition["status"], failed_condition["reason"], failed_condition["message"]) == (
        "True",
        "AppFailed",
        "exit code 2",
    )
    assert final.status["completionTime"] == CLOCK


@pytest.mark.parametrize("reason", ["DeadlineExceeded", "ValidationFailed"])
def test_failures_a_restart_would_repeat_fail_the_job_at_once(reason):
    body = job_body(backoffLimit=3)
    first = plan(body)
    failed = with_status(
        first.create_rayjob, jobStatus="FAILED", jobDeploymentStatus="Failed", reason=reason, message="no"
    )
    result = plan(applied(body, first), [failed])
    assert result.create_rayjob is None
    assert (result.status["phase"], cond(result, "Failed")["reason"]) == ("Failed", reason)


def test_backoff_limit_zero_fails_on_the_first_failure():
    body = job_body(backoffLimit=0)
    first = plan(body)
    failed = with_status(
        first.create_rayjob, jobStatus="FAILED", jobDeploymentStatus="Failed", reason="AppFailed"
    )
    assert plan(applied(body, first), [failed]).status["phase"] == "Failed"


def test_a_restart_interrupted_before_its_rayjob_was_created_creates_it_once():
    body = job_body(backoffLimit=2)
    first = plan(body)
    failed = with_status(
        first.create_rayjob, jobStatus="FAILED", jobDeploymentStatus="Failed", reason="AppFailed"
    )
    restart = plan(applied(body, first), [failed])
    # The operator died after patching the status, before creating attempt 1's RayJob.
    resumed = plan(applied(applied(body, first), restart), [failed])
    assert resumed.create_rayjob["metadata"]["name"] == "grpo-qwen-math-a1"
    assert "attempt" not in resumed.status and "phase" not in resumed.status  # already attempt 1, Retrying


def test_a_rayjob_newer_than_the_status_is_adopted_not_duplicated():
    body = job_body(backoffLimit=2)
    first = plan(body)
    failed = with_status(
        first.create_rayjob, jobStatus="FAILED", jobDeploymentStatus="Failed", reason="AppFailed"
    )
    restart = plan(applied(body, first), [failed])
    # The operator died after creating attempt 1's RayJob, before patching the status.
    adopted = plan(applied(body, first), [failed, restart.create_rayjob])
    assert adopted.create_rayjob is None
    assert adopted.status["attempt"] == 1
    assert adopted.status["phase"] == "Retrying"


def test_rayjobs_owned_by_another_job_of_the_same_name_are_ignored():
    body = job_body()
    stale = copy.deepcopy(plan(body).create_rayjob)
    stale["metadata"]["ownerReferences"][0]["uid"] = "another-uid"
    stale["metadata"]["name"] = "grpo-qwen-math-a3"
    result = plan(body, [stale])
    assert result.create_rayjob["metadata"]["name"] == "grpo-qwen-math-a0"


def test_a_spec_edit_that_cannot_apply_in_place_is_refused_and_the_rayjob_left_alone():
    body = job_body()
    first = plan(body)
    rayjob = with_status(first.create_rayjob, jobStatus="RUNNING", jobDeploymentStatus="Running")
    body = applied(body, first)
    edited = copy.deepcopy(body)
    edited["metadata"]["generation"] = 2
    edited["spec"]["models"]["actor"]["model"] = "/models/other"
    edited["spec"]["training"]["maxSteps"] = 900
    result = plan(edited, [rayjob], recorded=first)
    assert result.create_rayjob is None and result.patch_rayjob is None and result.children == []
    refused = cond(result, "SpecChangeRefused")
    assert (refused["status"], refused["reason"]) == ("True", "NotInPlace")
    assert "Only these fields apply in place: suspend, activeDeadlineSeconds" in refused["message"]
    assert "delete the job and apply it again" in refused["message"]
    assert refused["message"].startswith("spec.models.actor.model, spec.training.maxSteps: cannot change")
    assert result.status["observedGeneration"] == 2
    assert ("Warning", "SpecChangeRefused") in [(e.type, e.reason) for e in result.events]
    # Reverting the edit clears the condition.
    reverted = copy.deepcopy(applied(edited, result))
    reverted["spec"] = body["spec"]
    cleared = plan(reverted, [rayjob], recorded=first)
    assert (cond(cleared, "SpecChangeRefused")["status"], cond(cleared, "SpecChangeRefused")["reason"]) == (
        "False",
        "SpecMatches",
    )


def test_a_spec_recorded_before_a_field_with_a_default_existed_is_not_an_edit():
    body = job_body()
    first = plan(body)
    rayjob = with_status(first.create_rayjob, jobStatus="RUNNING", jobDeploymentStatus="Running")
    rayjob["metadata"]["annotations"]["rlhf.io/spec-sha256"] = "recorded-by-an-older-operator"
    config = yaml.safe_load(first.config_map["data"]["trainer.yaml"])
    del config["spec"]["data"]["prompts"]["invalidRows"]  # added with a default since
    older = copy.deepcopy(first)
    older.config_map["data"]["trainer.yaml"] = yaml.safe_dump(config)
    result = plan(applied(body, first), [rayjob], recorded=older)
    assert result.recorded_reads == 1
    assert "SpecChangeRefused" not in [c["type"] for c in result.status.get("conditions", [])]


def test_suspend_applies_in_place_to_the_rayjob():
    body = job_body()
    first = plan(body)
    rayjob = with_status(first.create_rayjob, jobStatus="RUNNING", jobDeploymentStatus="Running")
    suspended = applied(body, first)
    suspended["spec"]["suspend"] = True
    result = plan(suspended, [rayjob])
    name, patch = result.patch_rayjob
    assert name == "grpo-qwen-math-a0"
    assert patch == {"spec": {"suspend": True}}  # the spec digest leaves in-place fields out
    assert result.recorded_reads == 0
    assert "SpecChangeRefused" not in [c["type"] for c in result.status["conditions"]]
    assert (cond(result, "Suspended")["status"], cond(result, "Suspended")["reason"]) == (
        "False",
        "Suspending",
    )
    # KubeRay reports the suspension: phase Suspended.
    rayjob = with_status(rayjob, jobStatus="", jobDeploymentStatus="Suspended")
    rayjob["spec"]["suspend"] = True
    done = plan(applied(suspended, result), [rayjob])
    assert done.patch_rayjob is None
    assert done.status["phase"] == "Suspended"
    assert cond(done, "Suspended")["status"] == "True"


def test_resuming_a_suspended_job_rewrites_the_config_to_resume_from_the_latest_checkpoint():
    body = job_body(suspend=True)
    first = plan(body)
    assert first.create_rayjob["spec"]["suspend"] is True
    rayjob = with_status(first.create_rayjob, jobStatus="", jobDeploymentStatus="Suspended")
    resumed = applied(body, first)
    resumed["spec"]["suspend"] = False
    resumed["status"]["latestCheckpoint"] = CHECKPOINT
    result = plan(resumed, [rayjob])
    assert result.patch_rayjob[1]["spec"] == {"suspend": False}
    assert trainer_config(result)["resumeFrom"] == "/checkpoints/step-40"
    assert trainer_config(result)["attempt"] == 0


@pytest.mark.parametrize(
    ("field", "value"), [("activeDeadlineSeconds", 3600), ("ttlSecondsAfterFinished", 60)]
)
def test_deadline_and_ttl_edits_apply_in_place(field, value):
    body = job_body()
    first = plan(body)
    rayjob = with_status(first.create_rayjob, jobStatus="RUNNING", jobDeploymentStatus="Running")
    edited = applied(body, first)
    edited["spec"][field] = value
    result = plan(edited, [rayjob])
    assert result.patch_rayjob[1]["spec"] == {field: value}
    assert "SpecChangeRefused" not in [c["type"] for c in result.status.get("conditions", [])]


def test_a_restart_keeps_the_spec_the_job_started_with():
    body = job_body(backoffLimit=2)
    first = plan(body)
    failed = with_status(
        first.create_rayjob, jobStatus="FAILED", jobDeploymentStatus="Failed", reason="AppFailed"
    )
    edited = applied(body, first)
    edited["spec"]["training"]["maxSteps"] = 900  # refused while attempt 0 exists
    edited["spec"]["backoffLimit"] = 3  # in place
    restart = plan(edited, [failed], recorded=first)
    assert trainer_config(restart)["spec"]["training"]["maxSteps"] == 500
    assert trainer_config(restart)["spec"]["backoffLimit"] == 3


def test_a_spec_the_operator_cannot_read_fails_the_job_permanently_naming_the_field():
    body = job_body()
    body["spec"]["models"]["actor"]["gpus"] = "four"
    result = plan(body)
    assert result.failed_permanently.startswith("InvalidSpec: spec.models.actor.gpus: must be an integer")
    assert result.create_rayjob is None and result.children == []
    assert result.status["phase"] == "Failed"
    assert (cond(result, "Failed")["status"], cond(result, "Failed")["reason"]) == ("True", "InvalidSpec")
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "Failed")]


def test_an_unplaceable_job_fails_permanently_naming_the_field():
    body = job_body()
    body["spec"]["models"]["actor"]["gpus"] = 12
    # Batches that 12 data-parallel workers split evenly: only the pods are wrong.
    body["spec"]["training"].update(rolloutBatchSize=96, trainBatchSize=96)
    result = plan(body)
    assert result.failed_permanently.startswith(
        "RenderFailed: spec.models.actor.gpus: 12 GPUs cannot be placed"
    )
    assert result.status["message"].startswith("RenderFailed: spec.models.actor.gpus")
    assert result.create_rayjob is None


def test_a_finished_job_is_left_alone():
    body = job_body(status={"phase": "Failed", "attempt": 1})
    result = plan(body, [])
    assert (result.status, result.create_rayjob, result.children, result.events) == ({}, None, [], [])


def test_a_rayjob_deleted_by_hand_while_running_is_recreated_under_the_same_name():
    body = job_body()
    first = plan(body)
    body = applied(body, first)
    body["status"]["phase"] = "Running"
    result = plan(body, [])
    assert result.create_rayjob["metadata"]["name"] == "grpo-qwen-math-a0"


def test_diff_paths_names_each_changed_leaf():
    old = {"a": {"b": 1, "c": [1]}, "d": 2}
    new = {"a": {"b": 2, "c": [1, 2]}, "e": 3}
    assert diff_paths(old, new, "spec") == ["spec.a.b", "spec.a.c", "spec.d", "spec.e"]


def test_an_unreadable_edit_of_a_running_job_is_refused_and_the_job_keeps_running():
    body = job_body()
    first = plan(body)
    rayjob = with_status(first.create_rayjob, jobStatus="RUNNING", jobDeploymentStatus="Running")
    edited = applied(body, first)
    edited["spec"]["models"]["actor"]["gpus"] = "four"
    result = plan(edited, [rayjob], recorded=first)
    assert result.failed_permanently is None and result.patch_rayjob is None
    assert result.status["phase"] == "Running"
    refused = cond(result, "SpecChangeRefused")
    assert (refused["status"], refused["reason"]) == ("True", "InvalidSpec")
    assert "spec.models.actor.gpus: must be an integer" in refused["message"]


def failed_attempt(first, reason="AppFailed", message="exit code 1"):
    return with_status(
        first.create_rayjob, jobStatus="FAILED", jobDeploymentStatus="Failed", reason=reason, message=message
    )


def test_a_permanent_trainer_failure_fails_the_job_with_backoff_left():
    body = job_body(backoffLimit=3)
    first = plan(body)
    body = applied(body, first)
    body["status"]["failure"] = {  # written by the trainer before it exited
        "attempt": 0,
        "permanent": True,
        "reason": "PreflightFailed",
        "message": "models.actor.model: /models/missing does not exist",
    }
    result = plan(body, [failed_attempt(first)])
    assert result.create_rayjob is None and result.children == []
    assert result.status["phase"] == "Failed"
    assert result.status["message"] == "PreflightFailed: models.actor.model: /models/missing does not exist"
    failed = cond(result, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "PreflightFailed")
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "Failed")]


def test_a_retryable_trainer_failure_restarts_and_says_why():
    body = job_body(backoffLimit=3)
    first = plan(body)
    body = applied(body, first)
    body["status"]["failure"] = {
        "attempt": 0,
        "permanent": False,
        "reason": "RewardServerDown",
        "message": "503",
    }
    result = plan(body, [failed_attempt(first)])
    assert result.create_rayjob["metadata"]["name"] == "grpo-qwen-math-a1"
    assert "RewardServerDown: 503" in result.status["message"]


def test_a_failure_report_of_an_earlier_attempt_does_not_stop_a_later_one():
    body = job_body(backoffLimit=3)
    first = plan(body)
    restart = plan(applied(body, first), [failed_attempt(first)])
    body = applied(applied(body, first), restart)
    body["status"]["failure"] = {"attempt": 0, "permanent": True, "reason": "PreflightFailed", "message": ""}
    second = failed_attempt(restart, message="exit code 2")
    again = plan(body, [failed_attempt(first), second])
    assert again.create_rayjob["metadata"]["name"] == "grpo-qwen-math-a2"


def test_status_events_render_nothing(monkeypatch):
    body = job_body()
    first = plan(body)
    rayjob = with_status(first.create_rayjob, jobStatus="RUNNING", jobDeploymentStatus="Running")

    def no_render(*_args, **_kwargs):
        raise AssertionError("rendered on a status event")

    monkeypatch.setattr("rlhf_operator.render.render_job_objects", no_render)
    assert plan(applied(body, first), [rayjob]).status["phase"] == "Running"


def test_renders_are_cached_per_generation_and_attempt(monkeypatch):
    import rlhf_operator.render as render_module

    calls = []
    real = render_module.render_job_objects
    monkeypatch.setattr(
        "rlhf_operator.render.render_job_objects", lambda job, options: calls.append(1) or real(job, options)
    )
    cache = RenderCache()
    body = job_body()
    one, two = plan(body, cache=cache), plan(body, cache=cache)
    assert len(calls) == 1 and one.create_rayjob is two.create_rayjob
    plan(job_body(generation=2, backoffLimit=4), cache=cache)
    assert len(calls) == 2


def test_a_rayjob_with_the_jobs_label_but_not_its_owner_reference_is_not_adopted():
    body = job_body()
    foreign = copy.deepcopy(plan(body).create_rayjob)
    del foreign["metadata"]["ownerReferences"]
    result = plan(body, [with_status(foreign, jobStatus="SUCCEEDED", jobDeploymentStatus="Complete")])
    assert result.create_rayjob is not None and result.status["phase"] == "Pending"


def test_status_documents_are_valid_rlhfjob_status():
    from rlhf_trainer.api.status import RLHFJobStatus

    body = job_body(backoffLimit=1)
    first = plan(body)
    body = applied(body, first)
    steps = [
        [with_status(first.create_rayjob, jobStatus="RUNNING", jobDeploymentStatus="Running")],
        [failed_attempt(first)],
    ]
    RLHFJobStatus.model_validate(body["status"])
    for rayjobs in steps:
        result = plan(body, rayjobs)
        body = applied(body, result)
        RLHFJobStatus.model_validate(body["status"])
    invalid = job_body()
    invalid["spec"]["models"]["actor"]["gpus"] = "four"
    RLHFJobStatus.model_validate(applied(invalid, plan(invalid))["status"])


def test_a_driver_log_in_the_rayjob_message_is_bounded_and_scrubbed():
    body = job_body(backoffLimit=0)
    first = plan(body)
    log = "Traceback\n" + "x" * 20_000 + "\nrequests.post(headers={'Authorization': 'Bearer s3cr3t-value'})\n"
    log += "HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz https://user:pw123@reward.example/score?token=abc123\n"
    result = plan(applied(body, first), [failed_attempt(first, message=log)])
    texts = [result.status["message"], *(c["message"] for c in result.status["conditions"])]
    for text in texts:
        assert len(text) <= 1100
        for secret in ("s3cr3t-value", "hf_abcdefghij", "pw123", "abc123"):
            assert secret not in text
    assert "[redacted]" in result.status["message"]
    assert all(len(e.message) <= 1100 for e in result.events)
