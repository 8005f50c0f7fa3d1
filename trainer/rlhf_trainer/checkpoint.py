"""Checkpoints: every N steps and at the end, the last K kept, resumable exactly.

Layout of `<checkpoint.path>/step_000010/`:
  actor/, critic/     DeepSpeed states (weights, optimizer, LR schedule) + each worker's RNG
  rollout/            RNG of each rollout engine (they sample the tokens)
  hf/                 the actor in HF format, loadable by from_pretrained, with its tokenizer
  trainer_state.json  step and data position; driver_rng.pt the driver's RNG
  COMPLETE            written last: a directory without it is never resumed from

With an s3:// path the directory is written under stagingPath, then uploaded and committed by
checkpoint_store.ObjectStore (its own layout, fenced by attempt).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .api.spec import CheckpointSpec, is_s3_path
from .backends.base import Backend
from .rng import capture_rng_state, restore_rng_state
from .role_groups import Roles

if TYPE_CHECKING:
    from .checkpoint_store import ObjectStore

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step_(\d+)$")
COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.json"


class CheckpointError(ValueError):
    """A checkpoint to resume from that is missing or incomplete; names the field."""


@dataclass(frozen=True)
class SavedCheckpoint:
    step: int
    path: str
    hf_path: str | None


def step_directory(root: str, step: int) -> str:
    return os.path.join(root, f"step_{step:06d}")


def complete_checkpoints(root: str) -> list[tuple[int, str]]:
    """(step, path) of every complete checkpoint under root, oldest first."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = STEP_DIR.match(name)
        path = os.path.join(root, name)
        if match and os.path.isfile(os.path.join(path, COMPLETE)):
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume(spec: CheckpointSpec | None, resume_from: str | None) -> str | None:
    """The checkpoint to start from: `resume_from` (the trainer config's override), else
    spec.checkpoint.resume: auto = the latest complete one under path (none: a fresh start),
    never, or an absolute path."""
    if resume_from is not None and spec is not None and is_s3_path(resume_from):
        return None  # the operator's restart of an s3 job: the newest committed one, as resume: auto
    if resume_from is not None:
        return _require(resume_from, "resumeFrom")
    if spec is None or spec.resume == "never":
        return None
    if spec.resume == "auto":
        if is_s3_path(spec.path):
            return None  # the runner picks the newest committed checkpoint in the bucket
        found = complete_checkpoints(os.path.abspath(spec.path))
        return found[-1][1] if found else None
    return _require(spec.resume, "spec.checkpoint.resume")


def _require(path: str, field: str) -> str:
    if not os.path.isdir(path):
        raise CheckpointError(f"{field}: checkpoint {path} does not exist")
    if not os.path.isfile(os.path.join(path, COMPLETE)):
        raise CheckpointError(f"{field}: checkpoint {path} is incomplete (no {COMPLETE} marker)")
    return path


class Checkpointer:
    def __init__(self, spec: CheckpointSpec, max_steps: int, store: ObjectStore | None = None) -> None:
        self.spec = spec
        self.root = os.path.abspath(spec.local_root)
        self.max_steps = max_steps
        self.store = store

    def due(self, step: int) -> bool:
        return step % self.spec.every_steps == 0 or step == self.max_steps

    def save(
        self, step: int, roles: Roles, backend: Backend, trainer_state: dict[str, Any]
    ) -> SavedCheckpoint:
        path = step_directory(self.root, step)
        if os.path.exists(path):  # a leftover of an interrupted save of the same step
            shutil.rmtree(path)
        os.makedirs(path)
        pending = roles.actor.call("save_checkpoint", os.path.join(path, "actor"))
        if roles.critic is not None:
            pending += roles.critic.call("save_checkpoint", os.path.join(path, "critic"))
        if roles.rollout is not None:
            pending += roles.rollout.call("save_checkpoint", os.path.join(path, "rollout"))
        hf_path = os.path.join(path, "hf") if self.spec.export_hf else None
        if hf_path is not None:
            pending += roles.actor.call("export_hf", hf_path)
        backend.get(pending)
        with open(os.path.join(path, STATE_FILE), "w") as f:
            json.dump({"step": step, **trainer_state}, f, indent=2)
        torch.save(capture_rng_state(), os.path.join(path, "driver_rng.pt"))
        with open(os.path.join(path, COMPLETE), "w") as f:
            f.write(f"{step}\n")
        if self.store is not None:
            stored = self.store.upload(step, path)
            self.store.prune(self.spec.keep)
            self._prune(keep_path=path, keep=1)  # staging: only the newest stays on local disk
            return SavedCheckpoint(step=step, path=stored.url, hf_path=stored.hf_url)
        self._prune(keep_path=path, keep=self.spec.keep)
        return SavedCheckpoint(step=step, path=path, hf_path=hf_path)

    def _prune(self, keep_path: str, keep: int) -> None:
        complete = complete_checkpoints(self.root)
        for _, old in complete[: max(0, len(complete) - keep)]:
            shutil.rmtree(old, ignore_errors=True)
        kept = {p for _, p in complete}
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            if STEP_DIR.match(name) and path not in kept and path != keep_path:
                shutil.rmtree(path, ignore_errors=True)  # interrupted saves


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
