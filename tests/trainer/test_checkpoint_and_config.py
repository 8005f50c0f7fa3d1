"""Which checkpoint a run resumes from, and `rlhf train --config` (run_config_file) on the same path
as `rlhf run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rlhf_trainer.api.spec import CheckpointSpec
from rlhf_trainer.checkpoint import CheckpointError, resolve_resume
from rlhf_trainer.runner import run_config_file

from .helpers import manifest, metrics


def make_checkpoints(root: Path, complete: list[int], incomplete: list[int]) -> None:
    for step in complete + incomplete:
        (root / f"step_{step:06d}.a000000.r000").mkdir(parents=True)
    for step in complete:
        (root / f"step_{step:06d}.a000000.r000" / "COMMITTED").write_text('{"files": {}}')


def test_the_store_picks_unless_the_spec_names_a_checkpoint(tmp_path: Path) -> None:
    make_checkpoints(tmp_path, complete=[10, 20], incomplete=[30])
    spec = CheckpointSpec(path=str(tmp_path), resume="auto")
    assert resolve_resume(spec, None) is None  # auto: the newest committed one (lifecycle)
    assert resolve_resume(spec.model_copy(update={"resume": "never"}), None) is None
    named = spec.model_copy(update={"resume": str(tmp_path / "step_000010.a000000.r000")})
    assert resolve_resume(named, None) == str(tmp_path / "step_000010.a000000.r000")


def test_resume_from_in_the_store_lets_the_store_pick_and_elsewhere_must_be_committed(tmp_path: Path) -> None:
    make_checkpoints(tmp_path / "store", complete=[10, 20], incomplete=[30])
    make_checkpoints(tmp_path / "other", complete=[10], incomplete=[30])
    (tmp_path / "old" / "step_000040").mkdir(parents=True)
    (tmp_path / "old" / "step_000040" / "COMPLETE").write_text("40\n")  # the layout before fencing
    spec = CheckpointSpec(path=str(tmp_path / "store"), resume="auto")
    # The operator's restart names status.latestCheckpoint.path: the store picks (with fallback).
    assert resolve_resume(spec, str(tmp_path / "store" / "step_000010.a000000.r000")) is None
    assert resolve_resume(spec, "s3://bucket/job/step_000010.a000000.r000") is None
    other = str(tmp_path / "other" / "step_000010.a000000.r000")
    assert resolve_resume(spec, other) == other
    assert resolve_resume(spec, str(tmp_path / "old" / "step_000040")) == str(
        tmp_path / "old" / "step_000040"
    )
    with pytest.raises(CheckpointError, match=r"^resumeFrom: checkpoint .*step_000030.* is incomplete"):
        resolve_resume(spec, str(tmp_path / "other" / "step_000030.a000000.r000"))
    with pytest.raises(CheckpointError, match=r"^spec\.checkpoint\.resume: checkpoint /nope does not exist"):
        resolve_resume(spec.model_copy(update={"resume": "/nope"}), None)


@pytest.mark.slow
def test_train_config_file_runs_the_job(demo_assets: dict, tiny_rewards: str, tmp_path: Path) -> None:
    doc = manifest(demo_assets["model"], demo_assets["prompts"], "grpo", {"training": {"maxSteps": 1}})
    config = {
        "jobName": "tiny",
        "namespace": "team-a",
        "spec": doc["spec"],
        "outputDir": str(tmp_path / "out"),
        "statusSink": "file",
        "backend": "local",
    }
    path = tmp_path / "trainer.yaml"
    path.write_text(yaml.safe_dump(config))
    assert run_config_file(str(path)) == 0
    assert [row["step"] for row in metrics(tmp_path / "out")] == [1]
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status["progress"]["step"] == 1 and status["progress"]["totalSteps"] == 1


def test_train_config_file_with_bad_keys_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "trainer.yaml"
    path.write_text(yaml.safe_dump({"jobName": "tiny", "outputDir": "/tmp/x", "statusSink": "elsewhere"}))
    assert run_config_file(str(path)) == 1
    err = capsys.readouterr().err
    assert "spec: required" in err and "statusSink: must be one of" in err
