"""The checkpoint store (rlhf_trainer.checkpoint_store) on both its backends, a directory (a
volume) and a real S3-compatible store (versitygw on loopback, e2e/objectstore.py), and the
trainer's stop on SIGTERM.

Store alone, each test on both backends:
- a committed checkpoint that does not fetch or load is skipped for the one before it;
- an attempt that a newer one has superseded commits nothing;
- two runs of the same attempt (a suspended job started again while the old run still commits in
  its grace period): the older commits nothing once the newer has claimed, and a marker that
  slipped in after the claim is ignored;
- unfinished saves are never read, and pruning deletes them with the checkpoints past `keep`.
The trainer:
- killed while writing (volume) or uploading (bucket) its step-4 checkpoint, it leaves step 3 as
  the newest committed one; the operator's next attempt resumes from it and ends with exactly the
  weights of an uninterrupted run;
- a committed checkpoint on a volume whose state does not load is skipped for the one before it
  (status.resume says so), and pruned;
- SIGTERM mid-run, sent by the head pod's preStop hook as the operator renders it: the trainer
  finishes the step, commits a checkpoint, exits 143 (the hook returns then); the next run of the
  same attempt claims run 1, resumes from it and ends with the uninterrupted run's weights;
- checkpoints in the layout from before the fencing (step_000002/COMPLETE) are resumed from.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from rlhf_trainer.api.job import TrainerConfig
from rlhf_trainer.api.validation import validate_manifest
from rlhf_trainer.checkpoint_backends import FileBackend, S3Backend
from rlhf_trainer.checkpoint_store import MARKER, CheckpointStore, SupersededError
from rlhf_trainer.lifecycle import STOPPED_EXIT_CODE, resume_from_store
from rlhf_trainer.runner import run_trainer

from .helpers import checkpoint_dir, checkpoint_steps, hf_weights, manifest, metrics, run

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
    return checkpoint_dir(root / "ckpt", MAX_STEPS) / "hf"


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


def kill_mid_save(trainer: subprocess.Popen, half: Path) -> None:
    """Stop the trainer as soon as the directory of its step-4 checkpoint appears (on the volume,
    or the first object of its upload: the posix backend keeps objects as files), then kill it.
    The marker comes last, after every other file."""
    try:
        wait_for(half.exists, trainer, timeout_s=600, poll_s=0.001)
        trainer.send_signal(signal.SIGSTOP)
        assert not (half / MARKER).exists(), "the save finished before the kill"
    finally:
        trainer.kill()
        trainer.wait()


def assert_same_weights(expected_hf: Path, actual_hf: Path) -> None:
    expected, actual = hf_weights(expected_hf), hf_weights(actual_hf)
    assert expected.keys() == actual.keys()
    differing = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert not differing, f"resumed weights differ: {differing}"


def restart_attempt(doc: dict, resume_from: str, output: Path) -> dict[str, Any]:
    """The operator's restart: attempt 1, resumeFrom = status.latestCheckpoint.path; the status."""
    job_model, errors = validate_manifest(doc)
    assert not errors
    config = TrainerConfig(
        job_name="tiny",
        spec=job_model.spec,
        attempt=1,
        resume_from=resume_from,
        output_dir=str(output),
        backend="local",
    )
    assert run_trainer(config) == 0
    return json.loads((output / "status.json").read_text())


# ---------------------------------------------------------------------------- the store alone


@dataclass
class Place:
    """One job's checkpoint root on one backend: stores of any attempt, and its files on disk."""

    url: str
    files: Path  # the root's files (the bucket's posix directory for S3)
    backend: Callable[[], Any]
    overwrite: Callable[[str, bytes], None]  # a file's content behind the store's back

    def store(self, attempt: int) -> CheckpointStore:
        return CheckpointStore(self.backend(), attempt)


@pytest.fixture(params=["volume", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    if request.param == "volume":
        root = tmp_path / "volume"

        def overwrite_file(relative: str, body: bytes) -> None:
            (root / relative).write_bytes(body)

        return Place(str(root), root, lambda: FileBackend(str(root)), overwrite_file)
    server = request.getfixturevalue("object_store")
    bucket = f"b{abs(hash(request.node.name)) % 10**9}"
    server.create_bucket(bucket)
    client = server.client()

    def overwrite_object(relative: str, body: bytes) -> None:
        client.put_object(Bucket=bucket, Key=f"job/{relative}", Body=body)

    url = f"s3://{bucket}/job"
    return Place(url, server.data_dir / bucket / "job", lambda: S3Backend(url, client), overwrite_object)


def save(store: CheckpointStore, step: int, staging: Path) -> Any:
    """A small checkpoint of `step` written where the ranks would write it, then committed."""
    path = Path(store.directory_for(step, str(staging)))
    shutil.rmtree(path, ignore_errors=True)
    (path / "actor").mkdir(parents=True)
    (path / "actor" / "state.pt").write_bytes(os.urandom(4096))
    (path / "trainer_state.json").write_text(json.dumps({"step": step}))
    return store.commit(step, str(path))


def read_state(path: str) -> dict[str, Any]:
    with open(os.path.join(path, "trainer_state.json")) as f:
        return json.load(f)


def steps_and_fences(store: CheckpointStore) -> list[tuple[int, tuple[int, int]]]:
    return [(c.step, c.fence) for c in store.committed()]


def test_a_checkpoint_that_does_not_load_falls_back_to_the_one_before(place: Place, tmp_path: Path) -> None:
    store = place.store(0)
    store.claim()
    for step in (1, 2, 3):
        save(store, step, tmp_path / "staging")
    # Step 3: a file truncated behind the store's back (a damaged disk); step 2: a state that does
    # not parse, of the same size (the marker's sizes still match).
    place.overwrite("step_000003.a000000.r000/actor/state.pt", b"short")
    state = (place.files / "step_000002.a000000.r000" / "trainer_state.json").read_bytes()
    place.overwrite("step_000002.a000000.r000/trainer_state.json", b"{" + b"!" * (len(state) - 1))

    newer = place.store(1)
    newer.claim()
    resumed = resume_from_store(newer, str(tmp_path / "fetched"), read_state)

    assert resumed.url == f"{place.url}/step_000001.a000000.r000"
    assert resumed.state == {"step": 1}
    assert [path for path, _ in resumed.skipped] == [
        f"{place.url}/step_000003.a000000.r000",
        f"{place.url}/step_000002.a000000.r000",
    ]
    assert resumed.skipped[0][1].startswith(f"OSError: {place.url}/step_000003.a000000.r000/actor/state.pt")
    assert "JSONDecodeError" in resumed.skipped[1][1]


def test_a_superseded_attempt_commits_nothing(place: Place, tmp_path: Path) -> None:
    old = place.store(2)
    old.claim()
    save(old, 1, tmp_path / "a")
    place.store(3).claim()  # the operator started attempt 3

    with pytest.raises(SupersededError, match="run 0 of attempt 3 has taken over"):
        save(old, 2, tmp_path / "b")
    assert steps_and_fences(place.store(3)) == [(1, (2, 0))]
    assert not (place.files / "step_000002.a000002.r000" / MARKER).exists()


def test_an_older_run_of_the_same_attempt_commits_nothing_once_a_newer_run_claimed(
    place: Place, tmp_path: Path
) -> None:
    """A suspended job started again keeps its attempt: its new run claims the next run number,
    and the old run (still saving its SIGTERM checkpoint in the grace period) is fenced out."""
    old, new = place.store(0), place.store(0)
    assert old.claim() == 0
    save(old, 5, tmp_path / "old")
    assert new.claim() == 1

    with pytest.raises(SupersededError, match="run 1 of attempt 0 has taken over"):
        save(old, 6, tmp_path / "old")
    assert not (place.files / "step_000006.a000000.r000" / MARKER).exists()
    assert steps_and_fences(new) == [(5, (0, 0))]  # the new run resumes from step 5
    save(new, 6, tmp_path / "new")
    # A marker of the old run that slipped in after the claim (the race the check cannot close
    # without a lock): younger than the newer claim, so readers ignore it.
    time.sleep(1.1)  # S3's LastModified counts whole seconds
    old.backend.write_marker("step_000006.a000000.r000", b'{"files": {}}')
    assert steps_and_fences(new) == [(6, (0, 1)), (5, (0, 0))]
    claims = sorted(p.name for p in (place.files / "attempts").iterdir() if p.name.startswith("a"))
    assert claims == ["a000000.r000", "a000000.r001"]


def test_unfinished_saves_are_never_read_and_pruning_deletes_them(place: Place, tmp_path: Path) -> None:
    store = place.store(0)
    store.claim()
    for step in (1, 2, 3):
        save(store, step, tmp_path / "staging")
    half = store.directory_for(4, str(tmp_path / "staging"))
    os.makedirs(half)
    Path(half, "trainer_state.json").write_text("{}")
    store.backend.store_files("step_000004.a000000.r000", half)  # files, no marker
    assert (place.files / "step_000004.a000000.r000" / "trainer_state.json").exists()
    assert steps_and_fences(store) == [(3, (0, 0)), (2, (0, 0)), (1, (0, 0))]

    newer = place.store(1)
    newer.claim()
    save(newer, 4, tmp_path / "staging")
    deleted = newer.prune(2)
    assert sorted(deleted) == [
        "step_000001.a000000.r000",
        "step_000002.a000000.r000",
        "step_000004.a000000.r000",
    ]
    names = sorted(p.name for p in place.files.iterdir())
    assert names == ["attempts", "step_000003.a000000.r000", "step_000004.a000001.r000"], names


def test_concurrent_starts_of_one_attempt_take_different_runs(place: Place) -> None:
    """Claims are exclusive (O_EXCL on a volume, If-None-Match on S3): racing starts of one
    attempt never share a run number."""
    runs: list[int] = []
    threads = [threading.Thread(target=lambda: runs.append(place.store(7).claim())) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(runs) == list(range(6))


@pytest.mark.slow
@pytest.mark.parametrize("where", ["volume", "s3"])
def test_a_killed_save_leaves_the_previous_checkpoint_to_resume_from(
    where: str,
    demo_assets: dict,
    tiny_rewards: str,
    uninterrupted: Path,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    if where == "volume":
        url, env = str(tmp_path / "ckpt"), {}
        doc = job(demo_assets, {"path": url, "everySteps": 1})
        files, backend = tmp_path / "ckpt", FileBackend(url)
    else:
        server, env = request.getfixturevalue("object_store"), request.getfixturevalue("credentials")
        server.create_bucket("killed-upload")
        url = "s3://killed-upload/team/job"
        doc = job(demo_assets, s3_checkpoint(server, url, tmp_path / "staging", every=1))
        files, backend = server.data_dir / "killed-upload" / "team" / "job", S3Backend(url, server.client())
    half = files / "step_000004.a000000.r000"

    kill_mid_save(start_trainer(doc, tmp_path, tiny_rewards, env), half)

    store = CheckpointStore(backend, attempt=1)
    assert steps_and_fences(store) == [(3, (0, 0)), (2, (0, 0))]  # keep: 2
    status = restart_attempt(doc, f"{url}/step_000003.a000000.r000", tmp_path / "out")
    assert status["resume"] == {
        "attempt": 1,
        "path": f"{url}/step_000003.a000000.r000",
        "step": 3,
        "skipped": [],
    }
    assert status["latestCheckpoint"]["path"] == f"{url}/step_000004.a000001.r000"
    assert status["latestCheckpoint"]["hfPath"] == f"{url}/step_000004.a000001.r000/hf"
    assert (status["latestCheckpoint"]["attempt"], status["latestCheckpoint"]["run"]) == (1, 0)
    assert [r["step"] for r in metrics(tmp_path / "out")] == [1, 2, 3, 4]  # steps 1-3 by attempt 0

    assert steps_and_fences(store) == [(4, (1, 0)), (3, (0, 0))]
    assert not half.exists(), "the half save of the killed attempt is deleted"
    assert sorted(p.name for p in files.iterdir()) == [
        "attempts",
        "step_000003.a000000.r000",
        "step_000004.a000001.r000",
    ]
    exported = store.fetch(store.committed()[0], str(tmp_path / "download"))
    assert_same_weights(uninterrupted, Path(exported) / "hf")


@pytest.mark.slow
def test_sigterm_commits_a_checkpoint_and_the_next_run_resumes_to_the_uninterrupted_weights(
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

    saved = checkpoint_steps(checkpoints)
    assert len(saved) == 1 and saved[0] in (1, 2, 3), saved
    stopped_at = saved[0]
    assert checkpoint_dir(checkpoints, stopped_at).name == f"step_{stopped_at:06d}.a000000.r000"
    assert [r["step"] for r in metrics(tmp_path / "out")] == list(range(1, stopped_at + 1))

    # The job started again under the same attempt (a suspend, a preemption): run 1 of attempt 0.
    assert run(doc, tmp_path / "out") == 0  # resume: auto picks the SIGTERM checkpoint
    assert [r["step"] for r in metrics(tmp_path / "out")] == [1, 2, 3, 4]
    final = checkpoint_dir(checkpoints, MAX_STEPS)
    assert final.name == f"step_{MAX_STEPS:06d}.a000000.r001"
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status["resume"]["step"] == stopped_at and status["latestCheckpoint"]["run"] == 1, status
    assert_same_weights(uninterrupted, final / "hf")


@pytest.mark.slow
def test_checkpoints_in_the_layout_before_fencing_are_resumed_from(
    demo_assets: dict, tiny_rewards: str, uninterrupted: Path, tmp_path: Path
) -> None:
    """A volume written before the fencing (step_000002/ with COMPLETE): resume: auto continues
    from it, and keep prunes it like any other."""
    checkpoints = tmp_path / "ckpt"
    doc = job(demo_assets, {"path": str(checkpoints), "everySteps": 2})
    assert run(doc, tmp_path / "first") == 0
    shutil.rmtree(checkpoint_dir(checkpoints, MAX_STEPS))
    legacy = checkpoints / "step_000002"
    checkpoint_dir(checkpoints, 2).rename(legacy)  # as the trainer used to name it
    (legacy / MARKER).rename(legacy / "COMPLETE")
    shutil.rmtree(checkpoints / "attempts")

    assert run(doc, tmp_path / "second") == 0
    assert [r["step"] for r in metrics(tmp_path / "second")] == [3, 4]
    assert_same_weights(uninterrupted, checkpoint_dir(checkpoints, MAX_STEPS) / "hf")
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "attempts",
        "step_000002",  # keep: 2
        "step_000004.a000000.r000",
    ]


@pytest.mark.slow
def test_a_damaged_checkpoint_on_a_volume_falls_back_to_the_one_before(
    demo_assets: dict, tiny_rewards: str, uninterrupted: Path, tmp_path: Path
) -> None:
    """The newest checkpoint's state does not parse (same size: the marker's sizes match, so it
    fails while loading, after the roles loaded its weights): the trainer falls back to step 2,
    reports the skip in status.resume, and reaches the uninterrupted run's weights again."""
    checkpoints = tmp_path / "ckpt"
    doc = job(demo_assets, {"path": str(checkpoints), "everySteps": 2})
    assert run(doc, tmp_path / "first") == 0
    damaged = checkpoint_dir(checkpoints, MAX_STEPS)
    state = damaged / "trainer_state.json"
    state.write_bytes(b"{" + b"!" * (state.stat().st_size - 1))

    assert run(doc, tmp_path / "second") == 0
    status = json.loads((tmp_path / "second" / "status.json").read_text())
    assert status["resume"]["path"] == str(checkpoint_dir(checkpoints, 2))
    assert [s["path"] for s in status["resume"]["skipped"]] == [str(damaged)]
    assert "JSONDecodeError" in status["resume"]["skipped"][0]["reason"]
    assert [r["step"] for r in metrics(tmp_path / "second")] == [3, 4]
    assert_same_weights(uninterrupted, checkpoints / f"step_{MAX_STEPS:06d}.a000000.r001" / "hf")
    # keep: 2 counts only checkpoints that load: the damaged one is pruned, step 2 stays.
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "attempts",
        "step_000002.a000000.r000",
        "step_000004.a000000.r001",
    ]
