"""The operator's side of the job lifecycle (pure): S3 credentials and the grace period in the pods,
Kueue admission (queued, admitted, preempted) and the trainer's checkpoint fallback as conditions
and events."""

from __future__ import annotations

import yaml
from operator_helpers import job_from, with_spec
from test_operator_decisions import applied, cond, job_body, plan, with_status

from rlhf_operator.render import (
    DRIVER_PID_FILE,
    HEAD_PRE_STOP,
    WORKER_PRE_STOP,
    RenderOptions,
    render_job_objects,
)

S3 = {
    "path": "s3://checkpoints/team-a/math",
    "s3": {"endpoint": "http://minio.storage:9000", "secretRef": {"name": "checkpoint-store"}},
    "volume": {"persistentVolumeClaim": {"claimName": "staging"}},
    "everySteps": 10,
}


def rendered(doc):
    objects = render_job_objects(job_from(doc), RenderOptions(default_image="img:1"))
    return objects[0], objects[-1]  # the trainer ConfigMap and the RayJob


def ray_pods(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["workerGroupSpecs"]
    ]


def test_s3_credentials_reach_the_pods_only_by_secret_reference():
    config_map, rayjob = rendered(with_spec("grpo-qwen2.5-7b-math", {"checkpoint": S3}))
    for pod in ray_pods(rayjob):
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {
            "secretKeyRef": {"name": "checkpoint-store", "key": "AWS_ACCESS_KEY_ID"}
        }
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "checkpoint-store"
        assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
        # The staging volume mounts at stagingPath, not at the s3:// URL.
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["checkpoints"] == "/tmp/rlhf-checkpoints"
    config = yaml.safe_load(config_map["data"]["trainer.yaml"])
    assert config["spec"]["checkpoint"]["s3"] == {
        "endpoint": "http://minio.storage:9000",
        "region": "us-east-1",
        "secretRef": {"name": "checkpoint-store"},
    }
    assert "AWS_" not in config_map["data"]["trainer.yaml"]


def test_every_ray_pod_gets_the_grace_period_to_commit_a_checkpoint():
    _, rayjob = rendered(with_spec("grpo-qwen2.5-7b-math", {}))
    assert {pod["terminationGracePeriodSeconds"] for pod in ray_pods(rayjob)} == {300}
    _, rayjob = rendered(with_spec("grpo-qwen2.5-7b-math", {"terminationGracePeriodSeconds": 900}))
    assert {pod["terminationGracePeriodSeconds"] for pod in ray_pods(rayjob)} == {900}
    # The head's hook signals the driver and waits for it; the workers' wait while the head's Ray answers.
    head, *workers = ray_pods(rayjob)
    assert head["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == HEAD_PRE_STOP
    assert {"name": "RLHF_DRIVER_PID_FILE", "value": DRIVER_PID_FILE} in head["containers"][0]["env"]
    assert workers and all(
        pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == WORKER_PRE_STOP for pod in workers
    )


def test_a_queued_job_waits_for_kueue_is_admitted_then_preempted():
    body = job_body(queueName="team-a")
    first = plan(body)
    rayjob = first.create_rayjob
    assert rayjob["spec"]["suspend"] is True  # Kueue unsuspends it on admission
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"

    body = applied(body, first)
    queued = plan(body, [with_status(rayjob, jobDeploymentStatus="Suspended")])
    assert queued.patch_rayjob is None  # the operator never unsuspends a queued RayJob
    assert queued.status["phase"] == "Queued"
    assert (cond(queued, "Admitted")["status"], cond(queued, "Admitted")["reason"]) == ("False", "Pending")
    assert "waiting for Kueue" in queued.status["message"]

    body = applied(body, queued)
    admitted_rayjob = with_status(rayjob, jobStatus="RUNNING", jobDeploymentStatus="Running")
    admitted_rayjob["spec"]["suspend"] = False  # Kueue admitted it
    running = plan(body, [admitted_rayjob])
    assert running.patch_rayjob is None
    assert running.status["phase"] == "Running"
    assert cond(running, "Admitted")["status"] == "True"

    body = applied(body, running)
    preempted_rayjob = with_status(rayjob, jobDeploymentStatus="Suspending")  # Kueue suspended it again
    preempted = plan(body, [preempted_rayjob])
    assert preempted.patch_rayjob is None
    assert preempted.status["phase"] == "Queued"
    assert (cond(preempted, "Admitted")["status"], cond(preempted, "Admitted")["reason"]) == (
        "False",
        "Preempted",
    )
    assert ("Warning", "Preempted") in [(e.type, e.reason) for e in preempted.events]
    # Still preempted on the next event: the reason stays, no second warning.
    again = plan(applied(body, preempted), [preempted_rayjob])
    assert again.events == [] and "conditions" not in again.status


def test_a_checkpoint_fallback_is_a_condition_and_one_warning_event():
    resume = {
        "attempt": 0,
        "path": "s3://b/job/step_000010.a000000",
        "step": 10,
        "skipped": [{"path": "s3://b/job/step_000020.a000000", "reason": "OSError: truncated"}],
    }
    body = job_body()
    first = plan(body)
    rayjob = with_status(first.create_rayjob, jobStatus="RUNNING", jobDeploymentStatus="Running")
    body = applied(body, first)
    body["status"]["resume"] = resume  # the trainer's report
    result = plan(body, [rayjob])
    resumed = cond(result, "Resumed")
    assert (resumed["status"], resumed["reason"]) == ("True", "FellBack")
    assert "s3://b/job/step_000020.a000000" in resumed["message"]
    assert ("Warning", "CheckpointFallback") in [(e.type, e.reason) for e in result.events]
    again = plan(applied(body, result), [rayjob])
    assert again.events == []
