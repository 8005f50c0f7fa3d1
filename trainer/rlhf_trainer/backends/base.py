"""What the RL loop needs from a backend: start role workers, call their methods, wait for results.

Calls return pending results; `Backend.get` waits for them. The local backend runs a call when
it is waited for; Ray runs calls on different roles at the same time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from ..engine.device import DistributedContext
from .placement import WorkerPlacement


class RoleGroup:
    """The workers of one role (several for a data-parallel role or several rollout engines)."""

    def __init__(self, name: str, workers: list[Any], backend: Backend) -> None:
        self.name = name
        self.workers = workers
        self.backend = backend

    @property
    def size(self) -> int:
        return len(self.workers)

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """The same call on every worker."""
        return [self.backend.submit(worker, method, args, kwargs) for worker in self.workers]

    def call_each(self, method: str, per_worker: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Worker i gets the arguments per_worker[i]."""
        if len(per_worker) != self.size:
            raise ValueError(f"{self.name}: {len(per_worker)} argument sets for {self.size} workers")
        return [
            self.backend.submit(w, method, args, {}) for w, args in zip(self.workers, per_worker, strict=True)
        ]

    def first(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call every worker (collective methods need all ranks) and return rank 0's result."""
        return self.backend.get(self.call(method, *args, **kwargs))[0]


class Backend(ABC):
    remote: bool
    """True when roles live in other processes (arguments are copied)."""

    @abstractmethod
    def start_role(
        self,
        name: str,
        cls: type,
        args: Sequence[tuple[Any, ...]],
        placements: Sequence[WorkerPlacement],
        dist: Sequence[DistributedContext],
    ) -> RoleGroup:
        """Start one worker per placement; worker i runs cls(*args[i])."""

    @abstractmethod
    def submit(self, worker: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any: ...

    @abstractmethod
    def get(self, pending: list[Any]) -> list[Any]: ...

    def wait_ready(self, groups: Sequence[RoleGroup]) -> None:
        """Wait until every worker of `groups` is constructed."""
        for group in groups:
            self.get(group.call("ready"))

    def rendezvous(self, placement: WorkerPlacement, world_size: int) -> tuple[str, int]:
        """Master address and port of a role's process group (port 0: the worker picks one)."""
        return "127.0.0.1", 0

    def put(self, value: Any) -> Any:
        """A handle to pass the same large value to many calls (copied once on Ray)."""
        return value

    @abstractmethod
    def shutdown(self) -> None: ...
