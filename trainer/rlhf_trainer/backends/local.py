"""The in-process backend: the role classes run in this process, one worker each (tests,
single-GPU runs, machines without Ray)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..engine.device import DistributedContext
from .base import Backend, RoleGroup
from .placement import WorkerPlacement


class _Pending:
    """A call made when first waited for, so a phase's time is measured where the loop waits."""

    __slots__ = ("_thunk", "_done", "_value")

    def __init__(self, thunk: Any) -> None:
        self._thunk = thunk
        self._done = False
        self._value: Any = None

    def result(self) -> Any:
        if not self._done:
            self._value = self._thunk()
            self._done = True
            self._thunk = None
        return self._value


class LocalBackend(Backend):
    remote = False

    def __init__(self) -> None:
        self._unfinished: list[_Pending] = []
        self._workers: list[Any] = []

    def start_role(
        self,
        name: str,
        cls: type,
        args: Sequence[tuple[Any, ...]],
        placements: Sequence[WorkerPlacement],
        dist: Sequence[DistributedContext],
    ) -> RoleGroup:
        if len(args) != 1:
            raise ValueError(
                f"{name}: the local backend runs one worker per role, this role needs {len(args)} "
                "(GPUs > 1 or several rollout engines): use the ray backend"
            )
        worker = cls(*args[0])
        self._workers.append(worker)
        return RoleGroup(name, [worker], self)

    def submit(self, worker: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bound = getattr(worker, method)
        pending = _Pending(lambda: bound(*args, **kwargs))
        self._unfinished.append(pending)
        return pending

    def get(self, pending: list[Any]) -> list[Any]:
        # Calls run in the order they were made (as Ray orders calls on one actor), so waiting
        # for a later call first never reorders an update and what depends on it.
        wanted = {id(p) for p in pending}
        last = max((i for i, p in enumerate(self._unfinished) if id(p) in wanted), default=-1)
        for earlier in self._unfinished[: last + 1]:
            earlier.result()
        self._unfinished = self._unfinished[last + 1 :]
        return [p.result() for p in pending]

    def shutdown(self) -> None:
        # Calls never waited for still run, in order, so no update is silently dropped.
        try:
            for pending in self._unfinished:
                pending.result()
        finally:
            self._unfinished = []
            for worker in self._workers:  # roles holding engines stop them
                if hasattr(worker, "close"):
                    worker.close()
            self._workers = []
