"""What every role does when its process starts, and the per-process parts of a checkpoint."""

from __future__ import annotations

import json
import logging
import os

import torch

from ..engine.device import DistributedContext, device_for, init_distributed
from ..rng import capture_rng_state, restore_rng_state, seed_everything

log = logging.getLogger(__name__)
RANKS_FILE = "ranks.json"


def start_role_process(dist: DistributedContext, seed: int) -> torch.device:
    """Process group, threads and seeds; returns the device the role computes on.

    Seeding here (before any model is built) makes a fresh run's random inits, e.g. the critic's
    value head, the same on every run with that seed.
    """
    init_distributed(dist)
    seed_everything(seed + dist.rank)
    return device_for(dist.use_gpu)


def save_rng(directory: str, rank: int) -> None:
    os.makedirs(directory, exist_ok=True)
    torch.save(capture_rng_state(), os.path.join(directory, f"rng_rank{rank}.pt"))


def load_rng(directory: str, rank: int) -> None:
    """Restore this rank's RNG; a rank the checkpoint did not have (resumed on more ranks than it
    was written by) keeps its fresh seed."""
    path = os.path.join(directory, f"rng_rank{rank}.pt")
    if not os.path.isfile(path):
        log.info("%s: no RNG state of rank %d (written by fewer ranks): seeded afresh", directory, rank)
        return
    restore_rng_state(torch.load(path, weights_only=False))


def save_ranks(directory: str, world_size: int, zero_stage: int) -> None:
    """What a resume checks first: how many ranks wrote this role's states, and with which ZeRO stage."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, RANKS_FILE), "w") as f:
        json.dump({"world_size": world_size, "zero_stage": zero_stage}, f)
