"""Which resumes read a checkpoint through DeepSpeed's universal form, and the error when its
conversion fails (the checkpoint written by 2 ranks has no DeepSpeed states to convert)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf_trainer.checkpoint_ranks import RankMismatchError, needs_universal, written_ranks


def role_directory(root: Path, world_size: int, zero_stage: int) -> Path:
    directory = root / "step_000002" / "actor"
    (directory / "engine").mkdir(parents=True)
    (directory / "ranks.json").write_text(json.dumps({"world_size": world_size, "zero_stage": zero_stage}))
    return directory


def test_same_ranks_zero0_and_old_checkpoints_load_as_written(tmp_path: Path) -> None:
    directory = role_directory(tmp_path, 2, 3)
    assert written_ranks(str(directory)) == (2, 3)
    assert not needs_universal(str(directory.parent), "actor", 2)
    zero0 = role_directory(tmp_path / "zero0", 2, 0)
    assert not needs_universal(str(zero0.parent), "actor", 1)  # rank 0's file holds everything
    (directory / "ranks.json").unlink()  # written before ranks were recorded: one rank
    assert written_ranks(str(directory)) is None
    assert not needs_universal(str(directory.parent), "actor", 4)


def test_a_failed_conversion_names_the_field_and_both_world_sizes(tmp_path: Path) -> None:
    directory = role_directory(tmp_path, 2, 3)
    with pytest.raises(RankMismatchError) as error:
        needs_universal(str(directory.parent), "actor", 1)
    message = str(error.value)
    assert message.startswith(f"spec.checkpoint: checkpoint {directory.parent} was written by 2 actor ranks")
    assert "this job runs 1 (spec.models.actor.gpus, or cpuRanks on CPU)" in message
    assert not (directory / "engine_universal").exists()
