"""Device choice and the per-process setup DeepSpeed needs (accelerator, process group).

A role with `gpus > 0` trains on CUDA; `gpus: 0` runs on CPU, where DeepSpeed needs
DS_ACCELERATOR=cpu before it is imported and torch.distributed uses gloo. One process holds one
process group: in the local backend every role shares it (world size 1), on Ray each worker
process creates its own.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where one worker of a role sits in that role's data-parallel group."""

    rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 0
    """0: pick a free port (world size 1 only)."""
    use_gpu: bool = False
    num_threads: int = 0
    """torch intra-op threads on CPU (0: torch's default)."""


def prepare_environment(use_gpu: bool) -> None:
    """Call before deepspeed is imported: its accelerator is fixed at import time. (And, for the
    OpenMP setting to apply, before torch is: `rlhf run` and `rlhf train` call it first thing.)"""
    if not use_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"
        # OpenMP threads that spin after each parallel region hold the cores other processes (or
        # other roles' processes) need; on a shared 2-core machine this made steps 4x slower.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Per-model loading bars from every role would bury the training progress.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node_address() -> str:
    """This node's address as other workers reach it (the loopback when alone)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def init_distributed(ctx: DistributedContext) -> None:
    """Create this process's default process group once; later calls (more roles in the same
    process) reuse it and must agree on its size."""
    prepare_environment(ctx.use_gpu)
    import torch
    import torch.distributed as dist

    if ctx.num_threads > 0 and not ctx.use_gpu:
        torch.set_num_threads(ctx.num_threads)
    if dist.is_initialized():
        if dist.get_world_size() != ctx.world_size:
            raise RuntimeError(
                f"this process already holds a process group of size {dist.get_world_size()}; "
                f"a role needs {ctx.world_size} (the local backend runs one worker per role)"
            )
        return
    port = ctx.master_port or free_port()
    os.environ.update(
        RANK=str(ctx.rank),
        LOCAL_RANK="0",  # Ray gives each GPU worker one visible device; CPU workers have no device index
        WORLD_SIZE=str(ctx.world_size),
        MASTER_ADDR=ctx.master_addr,
        MASTER_PORT=str(port),
    )
    if ctx.use_gpu:
        torch.cuda.set_device(0)
    import deepspeed

    if not ctx.use_gpu:
        # DeepSpeed's CPU backend compiles a shared-memory all-reduce op (a C++ build of a minute or
        # more, redone whenever the venv's path changes) that only its inference engine uses; the
        # training collectives go through gloo.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

    deepspeed.init_distributed(dist_backend="nccl" if ctx.use_gpu else "gloo", auto_mpi_discovery=False)
    log.debug("process group ready: rank %d of %d at %s:%d", ctx.rank, ctx.world_size, ctx.master_addr, port)


def device_for(use_gpu: bool):
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")
