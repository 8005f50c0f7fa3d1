"""The driver's side of the weight sync to vllm engines: it sets up the group and says when to
send; the weights themselves go straight from the actor's rank 0 to the engines
(`generation/transport.py`), never through the driver or Ray's object store.

Rank 0 of the group is the actor's rank 0; each engine's workers follow (one per engine on CPU,
`tensorParallelSize` per engine on GPU). NCCL between GPUs; gloo on CPU, and also when the
engines share the actor's GPUs (`colocate.all`): NCCL refuses two ranks on one device.
"""

from __future__ import annotations

import logging
from typing import Any

from .api.spec import RLHFJobSpec
from .backends.base import Backend
from .generation.transport import DEFAULT_BUCKET_BYTES
from .role_groups import Roles

log = logging.getLogger(__name__)


def sync_backend(spec: RLHFJobSpec) -> str:
    if spec.models.actor.gpus == 0 or spec.models.colocate.all:
        return "gloo"
    return "nccl"


def workers_per_engine(spec: RLHFJobSpec) -> int:
    """vLLM workers in one engine: its tensor-parallel size on GPU, 1 on CPU."""
    return spec.models.rollout.tensor_parallel_size if spec.models.actor.gpus > 0 else 1


class EngineWeightSync:
    """`open()` once after the roles start, `push()` after every actor update."""

    def __init__(
        self, spec: RLHFJobSpec, roles: Roles, backend: Backend, bucket_bytes: int = DEFAULT_BUCKET_BYTES
    ) -> None:
        if roles.rollout is None:
            raise ValueError("weight sync needs rollout engines")
        self.spec = spec
        self.roles = roles
        self.backend = backend
        self.bucket_bytes = bucket_bytes
        self.colocated = spec.models.colocate.all

    def _on_actor_rank0(self, method: str, *args: Any) -> Any:
        worker = self.roles.actor.workers[0]
        return self.backend.get([self.backend.submit(worker, method, args, {})])[0]

    def open(self) -> None:
        rollout = self.roles.rollout
        assert rollout is not None
        host, port = self._on_actor_rank0("weight_sync_endpoint")
        buckets = self._on_actor_rank0("weight_buckets", self.bucket_bytes)
        per_engine = workers_per_engine(self.spec)
        world_size = 1 + rollout.size * per_engine
        backend = sync_backend(self.spec)
        # Every member blocks until all have joined: submit every side before waiting.
        pending = self.roles.actor.call(
            "open_weight_sync", host, port, world_size, backend, self.bucket_bytes
        )
        pending += rollout.call_each(
            "open_weight_sync",
            [(host, port, 1 + i * per_engine, world_size, backend, buckets) for i in range(rollout.size)],
        )
        self.backend.get(pending)
        total = sum(m.nbytes for bucket in buckets for m in bucket)
        log.info(
            "weight sync: %s group of %d (actor rank 0 + %d engine worker(s)), %d bucket(s), %.1f MB",
            backend,
            world_size,
            world_size - 1,
            len(buckets),
            total / 1e6,
        )

    def push(self) -> int:
        """Send the actor's weights to every engine; returns the bytes the actor's rank 0 sent
        (each byte reaches every engine)."""
        rollout = self.roles.rollout
        assert rollout is not None
        sent = self.roles.actor.call("broadcast_weights")
        received = rollout.call("receive_weights")
        results = self.backend.get(sent + received)
        return int(results[0])

    def sleep_engines(self) -> None:
        """Colocated engines release their GPU memory while the actor trains."""
        if self.colocated and self.roles.rollout is not None:
            self.backend.get(self.roles.rollout.call("sleep"))
