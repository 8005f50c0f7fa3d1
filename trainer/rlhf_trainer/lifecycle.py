"""An attempt's lifecycle around the RL loop: where it resumes from, and stopping on SIGTERM.

Resume: with an s3:// checkpoint path the newest committed checkpoint in the bucket is downloaded
and loaded; when that fails (a missing or truncated object, a state that does not load) the one
before it is tried, and the skipped ones are reported (log, status.resume). With a local path the
checkpoint preflight resolved is loaded, as before.

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
    from .checkpoint_store import ObjectStore
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


def open_store(config: TrainerConfig) -> ObjectStore | None:
    """The job's object store (claimed by this attempt), or None for a local checkpoint path."""
    spec = config.spec.checkpoint
    if spec is None or not spec.path.startswith("s3://"):
        return None
    from .checkpoint_store import ObjectStore, s3_client

    assert spec.s3 is not None  # validation requires it with an s3:// path
    store = ObjectStore(spec.path, s3_client(spec.s3), config.attempt)
    store.claim()
    return store


def resume_from_store(
    store: ObjectStore,
    staging: str,
    load: Callable[[str], dict[str, Any]],
) -> Resumed:
    """The newest committed checkpoint of this or an earlier attempt that downloads and loads;
    each newer one that fails is skipped (and said so)."""
    resumed = Resumed()
    for candidate in store.committed():
        if candidate.attempt > store.attempt:
            continue
        try:
            local = store.download(candidate, staging)
            state = load(local)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.warning(
                "checkpoint %s does not load (%s): falling back to the one before it", candidate.url, reason
            )
            resumed.skipped.append((candidate.url, reason))
            continue
        resumed.path, resumed.url, resumed.state = local, candidate.url, state
        break
    if resumed.skipped and resumed.path is None:
        log.warning("no committed checkpoint in %s loads: starting from the beginning", store.url)
    return resumed


def load_roles(roles: Roles, backend: Backend) -> Callable[[str], dict[str, Any]]:
    from .checkpoint import load_checkpoint

    return lambda path: load_checkpoint(path, roles, backend)
