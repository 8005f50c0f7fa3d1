"""An attempt's lifecycle around the RL loop: where it resumes from, and stopping on SIGTERM.

Resume: the job's checkpoint store (checkpoint_store.py: a volume or an s3:// prefix) is claimed by
this run first; then the newest committed checkpoint of this or an older run is fetched (checked
against its marker, downloaded from a bucket) and loaded; when that fails (a missing or truncated
file, a state that does not load) the one before it is tried, and the skipped ones are reported
(log, status.resume). An explicit checkpoint (spec.checkpoint.resume: /path, or a resumeFrom
outside the store) is loaded as it is.

Stop: a pod asked to stop (suspend, Kueue preemption, node drain) gets terminationGracePeriodSeconds
before SIGKILL. The head container's preStop hook (render.py) sends SIGTERM to the driver (its pid
is in $RLHF_DRIVER_PID_FILE) and waits for it to exit; the worker pods' hooks wait while the head's
Ray answers, so the roles live until the checkpoint is committed. `StopRequest` turns SIGTERM into
a flag the loop reads after each step: it finishes the step in progress, commits a checkpoint and
returns.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api.job import TrainerConfig
    from .backends.base import Backend
    from .checkpoint_store import CheckpointStore
    from .role_groups import Roles

log = logging.getLogger(__name__)

# The exit code of a trainer that stopped on SIGTERM after committing its checkpoint (128 + 15).
STOPPED_EXIT_CODE = 143
PID_FILE_ENV = "RLHF_DRIVER_PID_FILE"


class StopRequest:
    """Set by SIGTERM (or `request()`); the loop checks `requested` between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._previous: Any = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self) -> None:
        self._event.set()

    def install(self) -> None:
        """Handle SIGTERM in this (main) thread; a second SIGTERM falls back to the default. In a
        pod, also write this process's pid to $RLHF_DRIVER_PID_FILE: the head container's preStop
        hook signals the driver through it and waits for it to exit before Ray is torn down."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        pid_file = os.environ.get(PID_FILE_ENV)
        if pid_file:
            with open(pid_file, "w") as f:
                f.write(f"{os.getpid()}\n")

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
            pid_file = os.environ.get(PID_FILE_ENV)
            if pid_file and os.path.exists(pid_file):
                os.unlink(pid_file)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._event.is_set():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
            return
        log.warning("SIGTERM: finishing the current step, then committing a checkpoint and exiting")
        self._event.set()


@dataclass
class Resumed:
    path: str | None = None  # the local directory loaded
    url: str | None = None  # where it came from (the s3 URL or the local path)
    state: dict[str, Any] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)


def open_store(config: TrainerConfig) -> CheckpointStore | None:
    """The job's checkpoint store, claimed by this run (the next run number of its attempt), or
    None for a job without checkpoints."""
    spec = config.spec.checkpoint
    if spec is None:
        return None
    from .checkpoint_backends import open_backend
    from .checkpoint_store import CheckpointStore

    store = CheckpointStore(open_backend(spec.path, spec.s3), config.attempt)
    run = store.claim()
    log.info("checkpoints: %s, attempt %d run %d", store.url, store.attempt, run)
    return store


def resumes_from_store(config: TrainerConfig) -> bool:
    """True when the store picks the checkpoint: resume: auto, or the operator's restart (a
    resumeFrom in the job's own store)."""
    from .checkpoint import in_store

    checkpoint = config.spec.checkpoint
    if config.resume_from is not None:
        return in_store(checkpoint, config.resume_from)
    return checkpoint is not None and checkpoint.resume == "auto"


def resume_point(
    config: TrainerConfig,
    explicit: str | None,
    store: CheckpointStore | None,
    load: Callable[[str], dict[str, Any]],
) -> Resumed:
    """What this run starts from: the explicit checkpoint preflight resolved, else (when the store
    picks) the newest committed one that loads, else nothing."""
    if explicit is not None:
        return Resumed(explicit, explicit, load(explicit))
    if store is not None and resumes_from_store(config):
        assert config.spec.checkpoint is not None
        return resume_from_store(store, os.path.abspath(config.spec.checkpoint.local_root), load)
    return Resumed()


def resume_from_store(
    store: CheckpointStore,
    staging: str,
    load: Callable[[str], dict[str, Any]],
) -> Resumed:
    """The newest committed checkpoint of this or an older run that fetches and loads; each newer
    one that fails is skipped (and said so)."""
    resumed = Resumed()
    for candidate in store.committed():
        if candidate.fence > store.fence:
            continue
        try:
            local = store.fetch(candidate, staging)
            state = load(local)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.warning(
                "checkpoint %s does not load (%s): falling back to the one before it", candidate.url, reason
            )
            resumed.skipped.append((candidate.url, reason))
            store.unusable.add(candidate.name)  # not kept by the next prune
            continue
        resumed.path, resumed.url, resumed.state = local, candidate.url, state
        break
    if resumed.skipped and resumed.path is None:
        log.warning("no committed checkpoint in %s loads: starting from the beginning", store.url)
    return resumed


def load_roles(roles: Roles, backend: Backend) -> Callable[[str], dict[str, Any]]:
    from .checkpoint import load_checkpoint

    return lambda path: load_checkpoint(path, roles, backend)
