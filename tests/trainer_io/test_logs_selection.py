"""rlhf logs: which attempt and which of its submitter pods (pure parts of logs.py)."""

from __future__ import annotations

from rlhf_trainer.cli import build_parser
from rlhf_trainer.logs import job_attempt, newest_pod, submitter_selector


def pod(name: str, created: str) -> dict:
    return {"metadata": {"name": name, "creationTimestamp": created}}


def test_the_current_attempt_is_the_jobs_status_attempt():
    assert job_attempt({}) == 0
    assert job_attempt({"status": {"attempt": 3}}) == 3


def test_the_selector_names_the_job_the_attempt_and_the_submitter_role():
    assert submitter_selector("grpo", 2) == "rlhf.io/job=grpo,rlhf.io/attempt=2,rlhf.io/role=submitter"


def test_the_newest_pod_of_a_retried_submitter_job_is_read():
    pods = [
        pod("a", "2026-01-01 10:00:00+00:00"),
        pod("c", "2026-01-01 10:05:00+00:00"),
        pod("b", "2026-01-01 10:01:00+00:00"),
    ]
    assert newest_pod(pods)["metadata"]["name"] == "c"
    assert newest_pod([]) is None


def test_the_command_line():
    args = build_parser().parse_args(["logs", "grpo", "-n", "team-a", "-f", "--attempt", "1"])
    assert (args.job, args.namespace, args.follow, args.attempt) == ("grpo", "team-a", True, 1)
