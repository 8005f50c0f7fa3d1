"""How a job's role layout packs into Ray worker pods.

The layout (which roles run, their GPUs, who shares whose GPUs) comes from
`rlhf_trainer.api.layout`, the one owner of those rules; this module only packs it. Each pool
(a role and the roles that share its GPUs) is cut into blocks that must each sit inside one pod:
a worker of several GPUs (a vLLM engine's tensor-parallel group) is one block; a pool of
one-GPU workers of at most `gpusPerPod` GPUs is one block, a larger one is whole pods (a
multiple of `gpusPerPod`, or DeepSpeed's ranks would straddle pods unevenly); a role spread over
`nodes` gives one block per node. The blocks are packed best-fit decreasing into pods of
`gpusPerPod` GPUs, and pods with the same GPU count form one Ray worker group. Ray then places
the trainer's bundles on them; the pods request exactly the GPUs of the layout.

A role on CPU with several ranks (`cpuRanks`, a development knob) gets one CPU worker pod per
rank, in the worker group `cpu`: each pod offers one unit of the Ray resource CPU_RANK_RESOURCE
that each rank's bundle asks for, so the role's process group crosses pods as it crosses hosts on
a GPU cluster. Roles that share its pool ride on the same pods; a CPU role of one rank stays on
the Ray head.

Cost: blocks are counted, not listed, and a pod's free room is one of `gpusPerPod + 1` values,
so packing is O(distinct blocks x gpusPerPod) however many GPUs a job asks for; the job's GPUs
and pods are capped before anything is packed.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from rlhf_trainer.api.layout import JobLayout, LayoutError, check_layout, plan_roles
from rlhf_trainer.api.spec import RLHFJobSpec

from .errors import RenderError

WORKERS_FIELD = "spec.workers.gpusPerPod"
CPU_GROUP = "cpu"
# Worker pods of one job: 512 pods of 8 GPUs hold the largest job (MAX_JOB_GPUS); more pods means
# tiny pods for a large job, which KubeRay and the scheduler handle poorly.
MAX_WORKER_PODS = 1024


@dataclass(frozen=True)
class Pool:
    """GPUs held by one role and the roles that share them."""

    roles: tuple[str, ...]
    gpus: int
    nodes: int
    field: str  # the spec path that sets `gpus`, named in errors


@dataclass(frozen=True)
class Block:
    roles: tuple[str, ...]
    gpus: int


@dataclass(frozen=True)
class WorkerGroup:
    name: str
    gpus_per_pod: int
    replicas: int
    roles: tuple[str, ...]


@dataclass(frozen=True)
class Layout:
    roles: JobLayout
    pools: tuple[Pool, ...]
    groups: tuple[WorkerGroup, ...]

    @property
    def total_gpus(self) -> int:
        return sum(group.gpus_per_pod * group.replicas for group in self.groups)

    @property
    def cpu_rank_pods(self) -> int:
        """Worker pods of one CPU rank each (the `cpu` group)."""
        return sum(group.replicas for group in self.groups if group.name == CPU_GROUP)

    def describe(self) -> list[str]:
        """The decided layout in words: roles, pools, pods (what `rlhf render` shows)."""
        lines = ["roles:"] + [f"  {line}" for line in self.roles.describe()]
        lines.append(f"worker pods ({self.total_gpus} GPUs):")
        if not self.groups:
            lines.append("  none: no role uses a GPU, the Ray head runs the job")
        for group in self.groups:
            each = f"{group.gpus_per_pod} GPUs" if group.name != CPU_GROUP else "1 CPU rank"
            lines.append(f"  {group.name}: {group.replicas} pod(s) x {each}  [{', '.join(group.roles)}]")
        return lines


def plan_layout(spec: RLHFJobSpec) -> Layout:
    """The worker groups of a job, or RenderError naming the field that cannot be placed."""
    capacity = spec.workers.gpus_per_pod
    roles = plan_roles(spec)
    try:
        check_layout(roles)
    except LayoutError as exc:
        raise RenderError(exc.field, str(exc).split(": ", 1)[1]) from None
    pools = role_pools(roles)
    blocks: list[tuple[Block, int]] = []
    for pool in pools:
        blocks += pool_blocks(pool, roles, capacity)
    _check_tensor_parallel_on_actor(spec, roles, capacity)
    pods = pack(blocks, capacity)
    if len(pods) > MAX_WORKER_PODS:
        raise RenderError(
            WORKERS_FIELD,
            f"{capacity} GPUs per pod gives {len(pods)} worker pods, more than the {MAX_WORKER_PODS} "
            f"a job may have: use larger pods",
        )
    return Layout(roles=roles, pools=tuple(pools), groups=group_pods(pods) + cpu_rank_group(roles))


def cpu_rank_group(roles: JobLayout) -> tuple[WorkerGroup, ...]:
    """The `cpu` worker group: one pod per rank of each CPU role with several ranks."""
    hosts = roles.cpu_rank_hosts()
    if not hosts:
        return ()
    names = tuple(name for host in hosts for name in roles.pool(host.name))
    replicas = sum(host.workers for host in hosts)
    return (WorkerGroup(name=CPU_GROUP, gpus_per_pod=0, replicas=replicas, roles=names),)


def role_pools(roles: JobLayout) -> list[Pool]:
    """One pool per role that owns GPUs, listing the roles that share them."""
    return [Pool(roles.pool(host.name), host.gpus, host.nodes, host.field) for host in roles.hosts()]


def pool_blocks(pool: Pool, roles: JobLayout, capacity: int) -> list[tuple[Block, int]]:
    """Cut a pool into (block, count): blocks that each fit in one pod."""
    if pool.gpus == 0:
        return []
    host = roles[pool.roles[0]]
    if host.gpus_per_worker > 1:
        # A worker of several GPUs (a tensor-parallel group) never crosses pods.
        if host.gpus_per_worker > capacity:
            raise RenderError(
                "spec.models.rollout.tensorParallelSize",
                f"a tensor-parallel group of {host.gpus_per_worker} GPUs must fit in one pod "
                f"({WORKERS_FIELD}={capacity})",
            )
        return [(Block(pool.roles, host.gpus_per_worker), host.workers)]
    if pool.nodes > 1:
        per_node = pool.gpus // pool.nodes  # validation: gpus is a multiple of nodes
        if per_node > capacity:
            raise RenderError(
                pool.field,
                f"{pool.gpus} GPUs over {pool.nodes} nodes is {per_node} per node, more than a pod holds "
                f"({WORKERS_FIELD}={capacity})",
            )
        return [(Block(pool.roles, per_node), pool.nodes)]
    if pool.gpus <= capacity:
        return [(Block(pool.roles, pool.gpus), 1)]
    if pool.gpus % capacity:
        raise RenderError(
            pool.field,
            f"{pool.gpus} GPUs cannot be placed on pods of {capacity} GPUs ({WORKERS_FIELD}): "
            f"use at most {capacity} or a multiple of {capacity}",
        )
    return [(Block(pool.roles, capacity), pool.gpus // capacity)]


def _check_tensor_parallel_on_actor(spec: RLHFJobSpec, roles: JobLayout, capacity: int) -> None:
    """With colocate.all the engines live on the actor's GPUs: a TP group must not straddle two
    of its pods."""
    if "rollout" not in roles or roles["rollout"].shares_with is None:
        return
    tp = roles["rollout"].gpus_per_worker
    if tp > capacity:
        raise RenderError(
            "spec.models.rollout.tensorParallelSize",
            f"a tensor-parallel group of {tp} GPUs must fit in one pod ({WORKERS_FIELD}={capacity})",
        )
    if tp > 1 and spec.models.actor.gpus > capacity and capacity % tp:
        raise RenderError(
            "spec.models.rollout.tensorParallelSize",
            f"{tp} does not divide the {capacity} GPUs of a pod ({WORKERS_FIELD}), so with colocate.all "
            f"a tensor-parallel group would straddle two of the actor's pods",
        )


def pack(blocks: list[tuple[Block, int]] | list[Block], capacity: int) -> list[list[Block]]:
    """Best-fit decreasing: each block goes to the fullest pod it fits in (the earliest such pod
    on a tie), else to a new pod. `blocks` are (block, count) pairs or single blocks."""
    counted = [item if isinstance(item, tuple) else (item, 1) for item in blocks]
    counted.sort(key=lambda item: item[0].gpus, reverse=True)
    pods: list[list[Block]] = []
    # by_room[r]: a heap of the indexes of the pods with exactly r GPUs free.
    by_room: list[list[int]] = [[] for _ in range(capacity + 1)]
    for block, count in counted:
        for _ in range(count):
            room = next((r for r in range(block.gpus, capacity) if by_room[r]), None)
            if room is None:
                pods.append([block])
                heapq.heappush(by_room[capacity - block.gpus], len(pods) - 1)
                continue
            index = heapq.heappop(by_room[room])
            pods[index].append(block)
            heapq.heappush(by_room[room - block.gpus], index)
    return pods


def group_pods(pods: list[list[Block]]) -> tuple[WorkerGroup, ...]:
    """Pods with the same GPU count form one worker group, largest first."""
    by_size: dict[int, list[str]] = {}
    replicas: dict[int, int] = {}
    for pod in pods:
        size = sum(block.gpus for block in pod)
        replicas[size] = replicas.get(size, 0) + 1
        names = by_size.setdefault(size, [])
        for block in pod:
            names += [role for role in block.roles if role not in names]
    return tuple(
        WorkerGroup(name=f"gpu{size}", gpus_per_pod=size, replicas=replicas[size], roles=tuple(by_size[size]))
        for size in sorted(by_size, reverse=True)
    )
