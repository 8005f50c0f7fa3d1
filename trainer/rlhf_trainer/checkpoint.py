"""Checkpoints: every N steps and at the end, the last K kept, resumable exactly.

What one checkpoint directory holds:
  actor/, critic/     DeepSpeed states (weights, optimizer, LR schedule) + each worker's RNG
  rollout/            RNG of each rollout engine (they sample the tokens)
  hf/                 the actor in HF format, loadable by from_pretrained, with its tokenizer
  trainer_state.json  step and data position; driver_rng.pt the driver's RNG

Where it goes, how it is committed and fenced, and which one a run resumes from is the store's
(checkpoint_store.py): `<path>/step_000010.a000000.r000/` with a COMMITTED marker on a volume,
the same layout under an s3:// prefix (written to stagingPath, then uploaded).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .api.spec import CheckpointSpec, is_s3_path
from .backends.base import Backend
from .checkpoint_store import LEGACY_MARKER, MARKER
from .rng import capture_rng_state, restore_rng_state
from .role_groups import Roles

if TYPE_CHECKING:
    from .checkpoint_store import CheckpointStore

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"


class CheckpointError(ValueError):
    """A checkpoint to resume from that is missing or incomplete; names the field."""


@dataclass(frozen=True)
class SavedCheckpoint:
    step: int
    path: str
    hf_path: str | None


def in_store(spec: CheckpointSpec | None, path: str) -> bool:
    """True for a checkpoint of the job's own store: an s3:// URL, or a directory right under
    spec.checkpoint.path (what the operator's restarts pass as resumeFrom)."""
    if is_s3_path(path):
        return True
    if spec is None or is_s3_path(spec.path):
        return False
    return os.path.dirname(os.path.abspath(path)) == os.path.abspath(spec.path)


def resolve_resume(spec: CheckpointSpec | None, resume_from: str | None) -> str | None:
    """An explicit checkpoint to start from: `resume_from` (the trainer config's override), or
    spec.checkpoint.resume when it is a path. None when the store picks (resume: auto, or a
    resumeFrom in the job's own store: the newest committed checkpoint, falling back to older
    ones) or for a fresh start (resume: never)."""
    if resume_from is not None:
        if spec is not None and in_store(spec, resume_from):
            return None
        return _require(resume_from, "resumeFrom")
    if spec is None or spec.resume in ("auto", "never"):
        return None
    return _require(spec.resume, "spec.checkpoint.resume")


def _require(path: str, field: str) -> str:
    if not os.path.isdir(path):
        raise CheckpointError(f"{field}: checkpoint {path} does not exist")
    if not any(os.path.isfile(os.path.join(path, m)) for m in (MARKER, LEGACY_MARKER)):
        raise CheckpointError(f"{field}: checkpoint {path} is incomplete (no {MARKER} marker)")
    return path


class Checkpointer:
    def __init__(self, spec: CheckpointSpec, max_steps: int, store: CheckpointStore) -> None:
        self.spec = spec
        self.staging = os.path.abspath(spec.local_root)  # s3: stagingPath; unused on a volume
        self.max_steps = max_steps
        self.store = store

    def due(self, step: int) -> bool:
        return step % self.spec.every_steps == 0 or step == self.max_steps

    def save(
        self, step: int, roles: Roles, backend: Backend, trainer_state: dict[str, Any]
    ) -> SavedCheckpoint:
        """Write the checkpoint of `step`, commit it (SupersededError when a newer run has claimed
        the store), prune to `keep`."""
        path = self.store.directory_for(step, self.staging)
        if os.path.exists(path):  # a leftover of an interrupted save of the same step
            shutil.rmtree(path)
        os.makedirs(path)
        pending = roles.actor.call("save_checkpoint", os.path.join(path, "actor"))
        if roles.critic is not None:
            pending += roles.critic.call("save_checkpoint", os.path.join(path, "critic"))
        if roles.rollout is not None:
            pending += roles.rollout.call("save_checkpoint", os.path.join(path, "rollout"))
        if self.spec.export_hf:
            pending += roles.actor.call("export_hf", os.path.join(path, "hf"))
        backend.get(pending)
        with open(os.path.join(path, STATE_FILE), "w") as f:
            json.dump({"step": step, **trainer_state}, f, indent=2)
        torch.save(capture_rng_state(), os.path.join(path, "driver_rng.pt"))
        stored = self.store.commit(step, path)
        self.store.prune(self.spec.keep)
        if is_s3_path(self.spec.path):  # staging: only the newest stays on local disk
            for name in os.listdir(self.staging):
                if name.startswith("step_") and os.path.join(self.staging, name) != path:
                    shutil.rmtree(os.path.join(self.staging, name), ignore_errors=True)
        return SavedCheckpoint(step=step, path=stored.url, hf_path=stored.hf_url)


def load_checkpoint(path: str, roles: Roles, backend: Backend) -> dict[str, Any]:
    """Restore every role from `path`; returns the trainer state. The driver's RNG is restored
    last (restore_driver_rng), after everything that might still draw from it."""
    from .checkpoint_ranks import universal_loads

    universal = universal_loads(path, roles)  # written by another number of ranks: repartitioned
    pending = roles.actor.call("load_checkpoint", os.path.join(path, "actor"), universal["actor"])
    if roles.critic is not None:
        pending += roles.critic.call("load_checkpoint", os.path.join(path, "critic"), universal["critic"])
    if roles.rollout is not None:
        pending += roles.rollout.call("load_checkpoint", os.path.join(path, "rollout"))
    backend.get(pending)
    with open(os.path.join(path, STATE_FILE)) as f:
        return json.load(f)


def restore_driver_rng(path: str) -> None:
    restore_rng_state(torch.load(os.path.join(path, "driver_rng.pt"), weights_only=False))
