"""A resume on a different number of training ranks than the checkpoint was written by.

Each training role's checkpoint directory records the ranks that wrote it (`ranks.json`). ZeRO 1-3
partition the optimizer states (and ZeRO-3 the weights) by rank, and every rank keeps its own RNG
state: a checkpoint is read back only by the same number of ranks. Anything else is refused here,
before any role loads, with an error naming spec.checkpoint, the role and both world sizes (the
HF export under hf/ of a checkpoint starts a new job on any number of ranks).
"""

from __future__ import annotations

import json
import os

from .checkpoint import CheckpointError
from .role_groups import Roles
from .roles.base import RANKS_FILE

RANK_FIELD = "spec.models.{}.gpus, or cpuRanks on CPU"


class RankMismatchError(CheckpointError):
    """A checkpoint written by a different number of ranks that cannot be read by this job's."""


def written_ranks(directory: str) -> tuple[int, int] | None:
    """(world size, ZeRO stage) a role's checkpoint was written with; None for a checkpoint from
    before ranks were recorded (one rank)."""
    path = os.path.join(directory, RANKS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        recorded = json.load(f)
    return int(recorded["world_size"]), int(recorded["zero_stage"])


def check_ranks(path: str, role: str, directory: str, world_size: int, field: str) -> None:
    """RankMismatchError when `role`'s states under `directory` cannot be read by `world_size` ranks."""
    recorded = written_ranks(directory)
    if recorded is None:
        return
    written, stage = recorded
    if written == world_size:
        return
    raise RankMismatchError(
        f"spec.checkpoint: checkpoint {path} was written by {written} {role} ranks (ZeRO-{stage}), "
        f"this job runs {world_size} ({field}); its optimizer and RNG states are per rank, so resume "
        f"with {written} ranks, or start afresh from its hf/ export (spec.checkpoint.resume: never)"
    )


def check_training_ranks(path: str, roles: Roles) -> None:
    """check_ranks for the actor and the critic of a job about to resume from `path`."""
    check_ranks(path, "actor", os.path.join(path, "actor"), roles.actor.size, RANK_FIELD.format("actor"))
    if roles.critic is not None:
        check_ranks(
            path, "critic", os.path.join(path, "critic"), roles.critic.size, RANK_FIELD.format("critic")
        )
