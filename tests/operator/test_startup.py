"""Pods that cannot start -> StartupBlocked, events, the pre-running deadline (startup.py, pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rlhf_operator import startup

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def pod(name: str = "j-a0-head-x", role: str = "head", **status) -> dict:
    return {"metadata": {"name": name, "labels": {"rlhf.io/role": role}}, "status": status}


def waiting(reason: str, message: str = "", **extra) -> dict:
    return {
        "name": "ray-head",
        "image": "reg/img:1",
        "state": {"waiting": {"reason": reason, "message": message}},
        **extra,
    }


def unschedulable(message: str = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.") -> dict:
    return {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}


def test_an_unschedulable_pod_names_the_pod_and_the_schedulers_reason():
    problem = startup.pod_problem(pod(conditions=[unschedulable()]))
    assert problem.reason == "Unschedulable"
    assert (
        problem.message == "pod j-a0-head-x (head): 0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    )


def test_image_pull_and_config_errors_and_crash_loops_are_told_apart():
    pulled = startup.pod_problem(pod(containerStatuses=[waiting("ImagePullBackOff", "Back-off pulling")]))
    assert pulled.reason == "ImagePullFailed" and "reg/img:1" in pulled.message
    config = startup.pod_problem(
        pod(containerStatuses=[waiting("CreateContainerConfigError", 'secret "hf" not found')])
    )
    assert config.reason == "ContainerConfigError" and 'secret "hf" not found' in config.message
    crash = waiting(
        "CrashLoopBackOff", restartCount=4, lastState={"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    )
    looping = startup.pod_problem(pod(containerStatuses=[crash]))
    assert (
        looping.reason == "CrashLoopBackOff"
        and "exit code 137 (OOMKilled), restarted 4 times" in looping.message
    )


def test_a_pod_that_is_only_starting_shows_no_problem():
    assert startup.pod_problem(pod(phase="Pending")) is None
    assert startup.pod_problem(pod(containerStatuses=[waiting("ContainerCreating")])) is None
    scheduled = {"type": "PodScheduled", "status": "True"}
    assert startup.find_problem([pod(conditions=[scheduled])], []) is None


def test_a_refused_creation_comes_first_and_other_pods_are_counted():
    event = {
        "type": "Warning",
        "reason": "FailedToCreateWorkerPod",
        "message": "exceeded quota: gpu",
        "involvedObject": {"kind": "RayCluster", "name": "j-a0-abc"},
    }
    normal = {**event, "type": "Normal"}
    pods = [pod("b", conditions=[unschedulable()]), pod("a", conditions=[unschedulable()]), pod("c")]
    assert startup.find_problem(pods, [normal]).message.startswith("pod a (head)")
    assert "(and 1 more of 3 pods)" in startup.find_problem(pods, [normal]).message
    refused = startup.find_problem(pods, [event])
    assert (
        refused.reason == "AdmissionRefused" and refused.message == "RayCluster j-a0-abc: exceeded quota: gpu"
    )
    # KubeRay's RayJob controller sometimes creates its RayCluster twice from a stale cache; the
    # second create's "already exists" event, newer than the quota's, is not a refusal.
    twice = {
        **event,
        "reason": "FailedToCreateRayCluster",
        "message": 'Failed to create RayCluster ns/j-a0-abc: rayclusters.ray.io "j-a0-abc" already exists',
        "lastTimestamp": "2026-01-01T12:00:05Z",
    }
    first = {**event, "lastTimestamp": "2026-01-01T12:00:01Z"}
    assert startup.find_problem(pods, [first, twice]).message == "RayCluster j-a0-abc: exceeded quota: gpu"
    assert startup.event_problem(twice) is None


def test_the_condition_appears_with_a_hint_and_clears_to_false():
    problem = startup.Problem("Unschedulable", "pod p (worker): no fit")
    (cond,) = startup.startup_conditions({}, problem)
    assert (cond.type, cond.status, cond.reason) == ("StartupBlocked", "True", "Unschedulable")
    assert "spec.template.tolerations" in cond.message
    assert startup.startup_conditions({}, None) == ()
    before = {"conditions": [{"type": "StartupBlocked", "status": "True", "reason": "Unschedulable"}]}
    (cleared,) = startup.startup_conditions(before, None)
    assert cleared.status == "False"


def test_an_event_is_posted_when_the_cause_appears_or_changes_only():
    problem = startup.Problem("Unschedulable", "pod p: no fit")
    assert [e.reason for e in startup.problem_events({}, problem)] == ["Unschedulable"]
    same = {"conditions": [{"type": "StartupBlocked", "status": "True", "reason": "Unschedulable"}]}
    assert startup.problem_events(same, problem) == []
    other = startup.Problem("ImagePullFailed", "pod p: pull")
    assert [e.reason for e in startup.problem_events(same, other)] == ["ImagePullFailed"]


def rayjob(created: datetime) -> dict:
    return {"metadata": {"name": "j-a0", "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ")}}


def job(deadline: int | None = None, suspended_since: datetime | None = None, **spec) -> dict:
    if deadline is not None:
        spec["preRunningDeadlineSeconds"] = deadline
    status = {"phase": "Initializing", "attempt": 0}
    if suspended_since is not None:
        stamp = suspended_since.strftime("%Y-%m-%dT%H:%M:%SZ")
        status["conditions"] = [{"type": "Suspended", "status": "False", "lastTransitionTime": stamp}]
    return {"metadata": {"name": "j", "generation": 1}, "spec": spec, "status": status}


def test_the_deadline_runs_from_the_rayjob_or_the_resumption_and_only_while_starting():
    old = rayjob(NOW - timedelta(seconds=100))
    assert startup.deadline_exceeded(job(60), old, "Initializing", NOW)
    assert not startup.deadline_exceeded(job(600), old, "Initializing", NOW)
    assert not startup.deadline_exceeded(job(60), old, "Running", NOW)
    assert not startup.deadline_exceeded(job(0), old, "Pending", NOW)  # 0: no deadline
    assert not startup.deadline_exceeded(job(60, suspend=True), old, "Pending", NOW)
    resumed = job(60, suspended_since=NOW - timedelta(seconds=10))
    assert not startup.deadline_exceeded(resumed, old, "Initializing", NOW)
    queued = {**old, "spec": {"suspend": True}}  # Kueue holds the RayJob suspended until admitted
    assert not startup.deadline_exceeded(job(60), queued, "Pending", NOW)
    admitted = {**old, "status": {"startTime": (NOW - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")}}
    assert not startup.deadline_exceeded(job(60), admitted, "Initializing", NOW)  # KubeRay's startTime counts
    # the default applies when the field is unset
    assert startup.deadline_seconds(job()) == startup.DEFAULT_DEADLINE_SECONDS == 1800


def test_the_deadline_fails_the_job_naming_the_cause_and_suspends_its_rayjob():
    problem = startup.Problem(
        "ImagePullFailed", "pod j-a0-head-x (head) container ray-head: ImagePullBackOff"
    )
    plan = startup.deadline_plan(job(60), rayjob(NOW - timedelta(seconds=100)), problem, NOW)
    assert plan.phase == "Failed"
    assert plan.patch_rayjob == ("j-a0", {"spec": {"suspend": True}})
    assert plan.status["message"].startswith(
        "PreRunningDeadlineExceeded: attempt 0 did not start training within 60s (spec.preRunningDeadlineSeconds): "
        "ImagePullFailed: pod j-a0-head-x"
    )
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PreRunningDeadlineExceeded"
    assert [e.reason for e in plan.events] == ["Failed"]
