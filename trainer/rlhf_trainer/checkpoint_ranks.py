"""A resume on a different number of training ranks than the checkpoint was written by.

Each training role's checkpoint directory records the ranks that wrote it (`ranks.json`). Under
ZeRO 1-3 the optimizer states (and under ZeRO-3 the weights) are partitioned by rank, so another
number of ranks reads them through DeepSpeed's universal checkpoint: the driver converts the
role's states once (`ds_to_universal`, parameter by parameter, into `<role>/engine_universal`
next to them) and every rank loads its new partition from there. ZeRO 0 keeps everything in rank
0's file, which any number of ranks reads as it is. Ranks the checkpoint did not have start from
fresh RNG seeds, so such a resume continues the run without repeating it bit for bit. A
conversion that fails is refused with an error naming spec.checkpoint, the role and both world
sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil

from .checkpoint import CheckpointError
from .engine.deepspeed_engine import CHECKPOINT_TAG, UNIVERSAL_TAG
from .role_groups import Roles
from .roles.base import RANKS_FILE

log = logging.getLogger(__name__)

RANK_FIELD = "spec.models.{}.gpus, or cpuRanks on CPU"
CONVERTED = "CONVERTED"


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


def universal_loads(path: str, roles: Roles) -> dict[str, bool]:
    """Per training role of a job about to resume from `path`: True when its ranks read the
    universal form (converted here, once) because another number of ranks wrote the states."""
    groups = {"actor": roles.actor, "critic": roles.critic}
    return {
        role: needs_universal(path, role, group.size) for role, group in groups.items() if group is not None
    }


def needs_universal(path: str, role: str, world_size: int) -> bool:
    directory = os.path.join(path, role)
    recorded = written_ranks(directory)
    if recorded is None or recorded[0] == world_size:
        return False
    written, stage = recorded
    if stage == 0:
        log.info(
            "%s: %s states of %d ranks read by %d (ZeRO 0: rank 0's file)", path, role, written, world_size
        )
        return False
    try:
        convert_to_universal(directory)
    except Exception as exc:  # DeepSpeed's converter: any failure is the checkpoint's
        raise RankMismatchError(
            f"spec.checkpoint: checkpoint {path} was written by {written} {role} ranks (ZeRO-{stage}), "
            f"this job runs {world_size} ({RANK_FIELD.format(role)}), and converting it to DeepSpeed's "
            f"universal form failed ({type(exc).__name__}: {exc}): resume with {written} ranks, or start "
            f"afresh from its hf/ export (spec.checkpoint.resume: never)"
        ) from exc
    log.info(
        "%s: %s states of %d ranks repartitioned for %d (universal checkpoint)",
        path,
        role,
        written,
        world_size,
    )
    return True


def convert_to_universal(directory: str) -> None:
    """`<directory>/engine` in DeepSpeed's universal form under `<directory>/engine_universal`
    (kept: a later resume on the same ranks reuses it)."""
    target = os.path.join(directory, UNIVERSAL_TAG)
    if os.path.isfile(os.path.join(target, CONVERTED)):
        return
    from deepspeed.checkpoint import ds_to_universal

    partial = target + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    args = argparse.Namespace(
        input_folder=os.path.join(directory, CHECKPOINT_TAG),
        output_folder=partial,
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        # ZeRO 1-2 states carry no tensor/pipeline-parallel layout (none is used here): the
        # converter is told so rather than refusing them.
        inject_missing_state=True,
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # the converter narrates every phase on stdout
        ds_to_universal.main(args)
    log.debug("%s", printed.getvalue())
    with open(os.path.join(partial, CONVERTED), "w") as f:
        f.write("ds_to_universal\n")
    shutil.rmtree(target, ignore_errors=True)
    os.rename(partial, target)
