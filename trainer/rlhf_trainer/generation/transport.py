"""Moving the actor's weights to the rollout engines over a process group made for it.

The group has the actor's rank 0 as rank 0 (it sends) and every rollout engine worker after it
(they receive): gloo between CPU processes, NCCL between GPUs. It lives beside each process's own
default group (the actor's data-parallel group, vLLM's tensor-parallel group) without touching
them: a TCP store, a key prefix, and the backend object used directly.

The weights travel in buckets: consecutive parameters of one dtype packed into one flat tensor of
at most `bucket_bytes`, broadcast from rank 0. Both sides know the buckets before the first sync
(`plan_buckets` of the same manifest), so nothing but tensor data crosses the group, and neither
side ever holds more than one bucket beyond its model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

DEFAULT_BUCKET_BYTES = 256 * 1024 * 1024
STORE_PREFIX = "rlhf-weight-sync"
TIMEOUT_S = 900


@dataclass(frozen=True)
class TensorMeta:
    """One parameter as the receivers need to know it: HF name, shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    """torch dtype name without the module, e.g. float32."""

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.torch_dtype).element_size()


def tensor_meta(name: str, tensor: torch.Tensor, shape: tuple[int, ...] | None = None) -> TensorMeta:
    """`shape`: the full shape when `tensor` is a ZeRO-3 partition (its ds_shape)."""
    return TensorMeta(
        name, tuple(shape if shape is not None else tensor.shape), str(tensor.dtype).removeprefix("torch.")
    )


def plan_buckets(
    metas: Iterable[TensorMeta], bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> list[list[TensorMeta]]:
    """Consecutive tensors grouped into buckets of one dtype and at most `bucket_bytes` (a tensor
    larger than that gets a bucket of its own)."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    buckets: list[list[TensorMeta]] = []
    size = 0
    for meta in metas:
        current = buckets[-1] if buckets else None
        if current is None or current[0].dtype != meta.dtype or size + meta.nbytes > bucket_bytes:
            buckets.append([meta])
            size = meta.nbytes
        else:
            current.append(meta)
            size += meta.nbytes
    return buckets


class WeightGroup:
    """A process group of its own: rank 0 the sender, ranks 1.. the receivers."""

    def __init__(
        self, host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float = TIMEOUT_S
    ) -> None:
        import torch.distributed as dist

        if backend not in ("gloo", "nccl"):
            raise ValueError(f"weight sync backend must be gloo or nccl, got {backend!r}")
        timeout = timedelta(seconds=timeout_s)
        self.rank = rank
        self.world_size = world_size
        self.backend = backend
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        )
        # Rank 0 serves the store; the others connect to it, retrying until the timeout.
        self._store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
        store = dist.PrefixStore(STORE_PREFIX, self._store)
        if backend == "gloo":
            self._group: Any = dist.ProcessGroupGloo(store, rank, world_size, timeout)
        else:
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self._group = dist.ProcessGroupNCCL(store, rank, world_size, options)
        # A first collective proves everyone is there (and sets up NCCL's communicator now).
        self.broadcast(torch.zeros(1, device=self.device))

    def broadcast(self, tensor: torch.Tensor) -> None:
        import torch.distributed as dist

        options = dist.BroadcastOptions()
        options.rootRank = 0
        options.rootTensor = 0
        self._group.broadcast([tensor], options).wait()

    def close(self) -> None:
        group, self._group = self._group, None
        if group is not None and hasattr(group, "shutdown"):
            group.shutdown()
        self._store = None


def send_bucket(group: WeightGroup, bucket: list[TensorMeta], tensors: list[torch.Tensor]) -> int:
    """Rank 0: pack the bucket's tensors (full, in bucket order) and broadcast them. Returns bytes sent."""
    if len(tensors) != len(bucket):
        raise ValueError(f"bucket of {len(bucket)} tensors, got {len(tensors)}")
    for meta, tensor in zip(bucket, tensors, strict=True):
        if tuple(tensor.shape) != meta.shape:
            raise ValueError(f"{meta.name}: shape {tuple(tensor.shape)}, the manifest says {meta.shape}")
    flat = torch.cat(
        [
            t.detach().reshape(-1).to(group.device, meta.torch_dtype)
            for t, meta in zip(tensors, bucket, strict=True)
        ]
    )
    group.broadcast(flat)
    return flat.numel() * flat.element_size()


def receive_bucket(group: WeightGroup, bucket: list[TensorMeta]) -> list[tuple[str, torch.Tensor]]:
    """Ranks 1..: the bucket's tensors as views of one received flat tensor."""
    flat = torch.empty(sum(m.numel for m in bucket), dtype=bucket[0].torch_dtype, device=group.device)
    group.broadcast(flat)
    out, offset = [], 0
    for meta in bucket:
        out.append((meta.name, flat[offset : offset + meta.numel].view(meta.shape)))
        offset += meta.numel
    return out


def receive_all(group: WeightGroup, buckets: list[list[TensorMeta]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor, bucket after bucket, received as the consumer asks for the next one."""
    for bucket in buckets:
        yield from receive_bucket(group, bucket)
