"""KubeRay RayJob status -> attempt phase and conditions: the table for every (jobStatus,
jobDeploymentStatus) of KubeRay v1.6 (ray-operator/apis/ray/v1/rayjob_types.go)."""

from __future__ import annotations

import pytest

from rlhf_operator.status import Cond, attempt_state, conditions, rayjob_ref, status_patch

JOB_STATUSES = ("", "PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED")
DEPLOYMENT_STATUSES = (
    "",
    "Initializing",
    "Running",
    "Complete",
    "Failed",
    "ValidationFailed",
    "Suspending",
    "Suspended",
    "Retrying",
    "Waiting",
)

# deployment status -> (phase, outcome, retryable, RayClusterReady (status, reason), Running (status, reason)),
# the same whatever the jobStatus.
BY_DEPLOYMENT = {
    "": ("Pending", None, False, ("False", "Pending"), ("False", "NotStarted")),
    "Initializing": ("Initializing", None, False, ("False", "Initializing"), ("False", "NotStarted")),
    "Waiting": ("Initializing", None, False, ("True", "ClusterReady"), ("False", "NotStarted")),
    "Failed": ("Failed", "failed", True, ("False", "Failed"), ("False", "Failed")),
    "ValidationFailed": ("Failed", "failed", False, ("False", "ValidationFailed"), ("False", "Failed")),
    "Suspending": ("Suspended", None, False, ("False", "Suspending"), ("False", "Suspended")),
    "Suspended": ("Suspended", None, False, ("False", "Suspended"), ("False", "Suspended")),
    "Retrying": ("Retrying", None, False, ("False", "Retrying"), ("False", "Retrying")),
}
# (deployment, job) rows where the jobStatus matters.
BY_BOTH = {
    ("Running", ""): ("Initializing", None, False, ("True", "ClusterReady"), ("False", "Pending")),
    ("Running", "PENDING"): ("Initializing", None, False, ("True", "ClusterReady"), ("False", "Pending")),
    ("Running", "RUNNING"): ("Running", None, False, ("True", "ClusterReady"), ("True", "Running")),
    ("Running", "STOPPED"): ("Running", None, False, ("True", "ClusterReady"), ("False", "Finishing")),
    ("Running", "SUCCEEDED"): ("Running", None, False, ("True", "ClusterReady"), ("False", "Finishing")),
    ("Running", "FAILED"): ("Running", None, False, ("True", "ClusterReady"), ("False", "Finishing")),
    ("Complete", ""): ("Failed", "failed", True, ("False", "JobFinished"), ("False", "Incomplete")),
    ("Complete", "PENDING"): ("Failed", "failed", True, ("False", "JobFinished"), ("False", "Incomplete")),
    ("Complete", "RUNNING"): ("Failed", "failed", True, ("False", "JobFinished"), ("False", "Incomplete")),
    ("Complete", "STOPPED"): ("Failed", "failed", False, ("False", "JobFinished"), ("False", "Stopped")),
    ("Complete", "SUCCEEDED"): (
        "Succeeded",
        "succeeded",
        False,
        ("False", "JobFinished"),
        ("False", "Succeeded"),
    ),
    ("Complete", "FAILED"): ("Failed", "failed", True, ("False", "JobFinished"), ("False", "AppFailed")),
}


def expected(deployment: str, job: str):
    return BY_BOTH.get((deployment, job)) or BY_DEPLOYMENT[deployment]


def test_the_table_covers_every_combination():
    covered = {(d, j) for d in DEPLOYMENT_STATUSES for j in JOB_STATUSES if expected(d, j)}
    assert len(covered) == len(DEPLOYMENT_STATUSES) * len(JOB_STATUSES) == 60


@pytest.mark.parametrize("deployment", DEPLOYMENT_STATUSES)
@pytest.mark.parametrize("job", JOB_STATUSES)
def test_phase_and_conditions_for_each_kuberay_state(deployment, job):
    phase, outcome, retryable, cluster, training = expected(deployment, job)
    state = attempt_state(job, deployment)
    assert state.phase == phase
    assert state.outcome == outcome
    assert state.retryable is retryable
    assert (state.cluster.type, state.cluster.status, state.cluster.reason) == ("RayClusterReady", *cluster)
    assert (state.training.type, state.training.status, state.training.reason) == ("Running", *training)


@pytest.mark.parametrize(
    ("reason", "retryable"),
    [
        ("AppFailed", True),
        ("SubmissionFailed", True),
        ("JobDeploymentStatusTransitionGracePeriodExceeded", True),
        ("DeadlineExceeded", False),
        ("PreRunningDeadlineExceeded", False),
        ("ValidationFailed", False),
    ],
)
def test_kuberay_failure_reasons_decide_whether_a_new_attempt_can_help(reason, retryable):
    state = attempt_state("FAILED", "Failed", reason, "boom")
    assert (state.outcome, state.retryable, state.reason, state.message) == (
        "failed",
        retryable,
        reason,
        "boom",
    )
    assert (state.cluster.reason, state.cluster.message) == (reason, "boom")


def test_kuberay_message_is_carried_into_the_failure():
    state = attempt_state("FAILED", "Complete", "", "Job entrypoint command failed with exit code 1")
    assert state.reason == "AppFailed"
    assert state.message == "Job entrypoint command failed with exit code 1"


def test_an_unknown_deployment_status_keeps_the_phase_and_says_unknown():
    state = attempt_state("RUNNING", "SomethingNew")
    assert state.phase is None and state.outcome is None
    assert (state.cluster.status, state.cluster.reason) == ("Unknown", "UnknownDeploymentStatus")


def test_conditions_keep_their_transition_time_while_the_status_holds():
    before = conditions([], [Cond("Running", "False", "NotStarted")], "2025-01-01T00:00:00Z", 1)
    same = conditions(before, [Cond("Running", "False", "Pending", "x")], "2025-01-01T00:01:00Z", 2)
    flipped = conditions(same, [Cond("Running", "True", "Running")], "2025-01-01T00:02:00Z", 2)
    assert same == [
        {
            "type": "Running",
            "status": "False",
            "reason": "Pending",
            "message": "x",
            "lastTransitionTime": "2025-01-01T00:00:00Z",
            "observedGeneration": 2,
        }
    ]
    assert flipped[0]["lastTransitionTime"] == "2025-01-01T00:02:00Z"


def test_rayjob_ref_copies_the_rayjob_status():
    rayjob = {
        "status": {
            "jobStatus": "RUNNING",
            "jobDeploymentStatus": "Running",
            "rayClusterName": "j-a0-abcde",
            "dashboardURL": "j-a0-abcde-head-svc.ns.svc.cluster.local:8265",
            "jobId": "j-a0-xyz",
            "startTime": "2025-01-01T00:00:00Z",
        }
    }
    assert rayjob_ref(rayjob, "j-a0") == {
        "name": "j-a0",
        "jobStatus": "RUNNING",
        "deploymentStatus": "Running",
        "rayClusterName": "j-a0-abcde",
        "dashboardURL": "j-a0-abcde-head-svc.ns.svc.cluster.local:8265",
        "jobId": "j-a0-xyz",
    }
    assert rayjob_ref(None, "j-a1") == {"name": "j-a1"}


def test_status_patch_holds_only_changed_operator_fields():
    previous = {
        "phase": "Pending",
        "attempt": 0,
        "progress": {"step": 3},
        "metrics": {"reward/mean": 0.5},
        "rayJob": {"name": "j-a0", "rayClusterName": "j-a0-abc", "jobStatus": "RUNNING"},
    }
    patch = status_patch(previous, {"phase": "Suspended", "attempt": 0, "rayJob": {"name": "j-a0"}})
    # rayJob keys KubeRay cleared (on suspend) are nulled; the trainer's fields are not touched.
    assert patch == {
        "phase": "Suspended",
        "rayJob": {"name": "j-a0", "rayClusterName": None, "jobStatus": None},
    }


def test_status_patch_refuses_trainer_fields():
    with pytest.raises(ValueError, match="progress"):
        status_patch({}, {"phase": "Running", "progress": {"step": 1}})
