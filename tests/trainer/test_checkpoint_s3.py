"""Checkpoints in a real S3-compatible store (versitygw on loopback, e2e/objectstore.py), and the
trainer's stop on SIGTERM.

- A trainer killed while uploading its step-4 checkpoint leaves step 3 as the newest committed one;
  the next attempt resumes from it and ends with exactly the weights of an uninterrupted run; keep
  applies in the bucket and the half upload is deleted.
- A committed checkpoint that does not download or load is skipped for the one before it, and the
  skip is reported.
- An attempt that a newer one has superseded commits nothing.
- SIGTERM mid-run, sent by the head pod's preStop hook as the operator renders it: the trainer
  finishes the step, commits a checkpoint, exits 143 (the hook returns then); the next run resumes
  from it and ends with the uninterrupted run's weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from rlhf_trainer.api.job import TrainerConfig
from rlhf_trainer.api.validation import validate_manifest
from rlhf_trainer.checkpoint_store import MARKER, ObjectStore, SupersededError
from rlhf_trainer.lifecycle import STOPPED_EXIT_CODE, resume_from_store
from rlhf_trainer.runner import run_trainer

from .helpers import hf_weights, manifest, metrics, run

pytestmark = pytest.mark.slow

MAX_STEPS = 4
REPO = Path(__file__).resolve().parents[2]


def job(demo_assets: dict, checkpoint: dict[str, Any]) -> dict:
    # Cosine schedule with warmup and 4 prompts a step: the LR step, Adam moments, data position
    # and sampling RNG all have to come back on resume.
    return manifest(
        demo_assets["model"],
        demo_assets["prompts"],
        "grpo",
        {
            "training": {
                "maxSteps": MAX_STEPS,
                "rolloutBatchSize": 4,
                "trainBatchSize": 4,
                "lrSchedule": "cosine",
                "warmupRatio": 0.25,
            },
            "checkpoint": {"keep": 2, "resume": "auto", **checkpoint},
        },
    )


def s3_checkpoint(server: Any, url: str, staging: Path, every: int) -> dict[str, Any]:
    return {
        "path": url,
        "s3": {"endpoint": server.endpoint, "secretRef": {"name": "checkpoint-store"}},
        "stagingPath": str(staging),
        "everySteps": every,
    }


@pytest.fixture(scope="module")
def uninterrupted(demo_assets: dict, tiny_rewards: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HF export of a run that was never stopped (a checkpoint only at the end)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    doc = job(demo_assets, {"path": str(root / "ckpt"), "everySteps": MAX_STEPS})
    assert run(doc, root / "out") == 0
    return root / "ckpt" / f"step_{MAX_STEPS:06d}" / "hf"


@pytest.fixture
def credentials(object_store: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The store's keys in the environment, as the pods get them from the job's Secret."""
    for key, value in object_store.env.items():
        monkeypatch.setenv(key, value)
    return object_store.env


def start_trainer(doc: dict, tmp_path: Path, tiny_rewards: str, env: dict[str, str]) -> subprocess.Popen:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    pythonpath = os.pathsep.join([tiny_rewards, str(REPO / "operator"), str(REPO / "trainer")])
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlhf_trainer.cli",
            "run",
            str(path),
            "--backend",
            "local",
            "--output",
            str(tmp_path / "out"),
        ],
        env={**os.environ, **env, "PYTHONPATH": pythonpath},
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "trainer.log", "wb"),  # noqa: SIM115 (closed with the process)
    )


def wait_for(condition: Any, process: subprocess.Popen, timeout_s: float, poll_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"the trainer exited early with {process.returncode}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll_s)


def assert_same_weights(expected_hf: Path, actual_hf: Path) -> None:
    expected, actual = hf_weights(expected_hf), hf_weights(actual_hf)
    assert expected.keys() == actual.keys()
    differing = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert not differing, f"resumed weights differ: {differing}"


def test_a_killed_upload_leaves_the_previous_checkpoint_to_resume_from(
    demo_assets: dict,
    tiny_rewards: str,
    uninterrupted: Path,
    object_store: Any,
    credentials: dict[str, str],
    tmp_path: Path,
) -> None:
    object_store.create_bucket("killed-upload")
    url = "s3://killed-upload/team/job"
    doc = job(demo_assets, s3_checkpoint(object_store, url, tmp_path / "staging", every=1))
    prefix = object_store.data_dir / "killed-upload" / "team" / "job"
    half = prefix / "step_000004.a000000"

    trainer = start_trainer(doc, tmp_path, tiny_rewards, credentials)
    try:
        # The posix backend keeps objects as files: stop the trainer as soon as the first object of
        # the step-4 checkpoint lands (its marker comes last, after every other object), then kill it.
        wait_for(half.exists, trainer, timeout_s=600, poll_s=0.001)
        trainer.send_signal(signal.SIGSTOP)
        assert not (half / MARKER).exists(), "the upload finished before the kill"
    finally:
        trainer.kill()
        trainer.wait()

    store = ObjectStore(url, object_store.client(), attempt=1)
    assert [(c.step, c.attempt) for c in store.committed()] == [(3, 0), (2, 0)]  # keep: 2

    # The operator's restart: attempt 1, resumeFrom = status.latestCheckpoint.path (an s3 URL).
    job_model, errors = validate_manifest(doc)
    assert not errors
    config = TrainerConfig(
        job_name="tiny",
        spec=job_model.spec,
        attempt=1,
        resume_from=f"{url}/step_000003.a000000",
        output_dir=str(tmp_path / "out"),
        backend="local",
    )
    assert run_trainer(config) == 0

    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status["resume"] == {"attempt": 1, "path": f"{url}/step_000003.a000000", "step": 3, "skipped": []}
    assert status["latestCheckpoint"]["path"] == f"{url}/step_000004.a000001"
    assert status["latestCheckpoint"]["hfPath"] == f"{url}/step_000004.a000001/hf"
    assert [r["step"] for r in metrics(tmp_path / "out")] == [1, 2, 3, 4]  # steps 1-3 by attempt 0

    assert [(c.step, c.attempt) for c in store.committed()] == [(4, 1), (3, 0)]
    assert not half.exists(), "the half upload of the killed attempt is deleted"
    assert sorted(p.name for p in prefix.iterdir()) == [
        "attempts",
        "step_000003.a000000",
        "step_000004.a000001",
    ]
    exported = store.download(store.committed()[0], str(tmp_path / "download"))
    assert_same_weights(uninterrupted, Path(exported) / "hf")


def fake_checkpoint(root: Path, step: int) -> Path:
    path = root / f"step_{step:06d}"
    (path / "actor").mkdir(parents=True)
    (path / "actor" / "state.pt").write_bytes(os.urandom(4096))
    (path / "trainer_state.json").write_text(json.dumps({"step": step}))
    return path


def read_state(path: str) -> dict[str, Any]:
    with open(os.path.join(path, "trainer_state.json")) as f:
        return json.load(f)


def test_a_checkpoint_that_does_not_load_falls_back_to_the_one_before(
    object_store: Any, tmp_path: Path
) -> None:
    object_store.create_bucket("fallback")
    url = "s3://fallback/job"
    store = ObjectStore(url, object_store.client(), attempt=0)
    store.claim()
    for step in (1, 2, 3):
        store.upload(step, str(fake_checkpoint(tmp_path / "local", step)))
    # Step 3: an object truncated behind the store's back (a damaged disk); step 2: a state that
    # does not parse, uploaded over the good one with the same size (the marker's sizes still match).
    objects = object_store.data_dir / "fallback" / "job"
    (objects / "step_000003.a000000" / "actor" / "state.pt").write_bytes(b"short")
    object_store.client().put_object(
        Bucket="fallback", Key="job/step_000002.a000000/trainer_state.json", Body=b"{not json!}"
    )

    resumed = resume_from_store(
        ObjectStore(url, object_store.client(), attempt=1), str(tmp_path / "staging"), read_state
    )

    assert resumed.url == f"{url}/step_000001.a000000"
    assert resumed.state == {"step": 1}
    assert [path for path, _ in resumed.skipped] == [
        f"{url}/step_000003.a000000",
        f"{url}/step_000002.a000000",
    ]
    assert resumed.skipped[0][1].startswith("OSError: s3://fallback/job/step_000003.a000000/actor/state.pt")
    assert "JSONDecodeError" in resumed.skipped[1][1]


def test_a_superseded_attempt_commits_nothing(object_store: Any, tmp_path: Path) -> None:
    object_store.create_bucket("fencing")
    url = "s3://fencing/job"
    old = ObjectStore(url, object_store.client(), attempt=2)
    old.claim()
    old.upload(1, str(fake_checkpoint(tmp_path / "a", 1)))
    ObjectStore(url, object_store.client(), attempt=3).claim()  # the operator started attempt 3

    with pytest.raises(SupersededError, match="attempt 3 has taken over"):
        old.upload(2, str(fake_checkpoint(tmp_path / "b", 2)))
    newer = ObjectStore(url, object_store.client(), attempt=3)
    assert [(c.step, c.attempt) for c in newer.committed()] == [(1, 2)]
    assert not (object_store.data_dir / "fencing" / "job" / "step_000002.a000002" / MARKER).exists()


def test_sigterm_commits_a_checkpoint_and_the_resume_matches_an_uninterrupted_run(
    demo_assets: dict, tiny_rewards: str, uninterrupted: Path, tmp_path: Path
) -> None:
    from rlhf_operator.render import DRIVER_PID_FILE, HEAD_PRE_STOP

    checkpoints = tmp_path / "ckpt"
    pid_file = tmp_path / "driver.pid"
    doc = job(demo_assets, {"path": str(checkpoints), "everySteps": MAX_STEPS})  # none before the end
    trainer = start_trainer(doc, tmp_path, tiny_rewards, {"RLHF_DRIVER_PID_FILE": str(pid_file)})
    try:
        rows = tmp_path / "out" / "metrics.jsonl"
        wait_for(lambda: rows.exists() and rows.read_text().strip(), trainer, timeout_s=600, poll_s=0.05)
        # What the kubelet runs before it stops the head pod: the head's preStop hook signals the
        # driver (SIGTERM, during step 2 or later) and returns once it has exited.
        hook = subprocess.Popen([part.replace(DRIVER_PID_FILE, str(pid_file)) for part in HEAD_PRE_STOP])
        assert (
            trainer.wait(timeout=300) == STOPPED_EXIT_CODE
        )  # reaped here (in a pod: by Ray's job supervisor)
        assert hook.wait(timeout=30) == 0
    finally:
        trainer.kill()
        trainer.wait()
    assert not pid_file.exists()

    saved = sorted(p.name for p in checkpoints.iterdir())
    assert len(saved) == 1 and saved[0] in ("step_000001", "step_000002", "step_000003"), saved
    assert (checkpoints / saved[0] / "COMPLETE").exists()
    stopped_at = int(saved[0].removeprefix("step_"))
    assert [r["step"] for r in metrics(tmp_path / "out")] == list(range(1, stopped_at + 1))

    assert run(doc, tmp_path / "out") == 0  # resume: auto picks the SIGTERM checkpoint
    assert [r["step"] for r in metrics(tmp_path / "out")] == [1, 2, 3, 4]
    assert_same_weights(uninterrupted, checkpoints / f"step_{MAX_STEPS:06d}" / "hf")
