"""How a job's GPUs pack into Ray worker pods.

Each role holds a pool of GPUs (colocated roles share one pool). A pool is cut into blocks
that must each sit inside one pod: a pool of at most `gpusPerPod` GPUs is one block, a larger
one is whole pods (it must be a multiple of `gpusPerPod`, or DeepSpeed's ranks would straddle
pods unevenly); a role spread over `nodes` gives one block per node; each vLLM engine is one
block of `tensorParallelSize` GPUs (a tensor-parallel group never crosses pods). The blocks are
packed first-fit-decreasing into pods of `gpusPerPod` GPUs, and pods with the same GPU count
form one Ray worker group. Ray then places the trainer's placement groups on them; the packing
proves the layout fits, and the pods request exactly the GPUs the roles need in total.

Rollout engines: vllm engines each take `tensorParallelSize` GPUs; hf engines take one GPU each
when the actor has GPUs (else they run on CPU); with `colocate.all` they share the actor's GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_trainer.api.spec import ModelsSpec, RLHFJobSpec, RoleSpec
from rlhf_trainer.api.stages import layout_view

from .errors import RenderError

WORKERS_FIELD = "spec.workers.gpusPerPod"
DEFAULT_REWARD_MODEL_GPUS = 1


@dataclass(frozen=True)
class Pool:
    """GPUs held by one role, or by colocated roles together."""

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
    pools: tuple[Pool, ...]
    groups: tuple[WorkerGroup, ...]

    @property
    def total_gpus(self) -> int:
        return sum(group.gpus_per_pod * group.replicas for group in self.groups)


def plan_layout(spec: RLHFJobSpec) -> Layout:
    """The worker groups of a job, or RenderError naming the field that cannot be placed."""
    spec = layout_view(spec)  # an offline stage places only its trained model
    capacity = spec.workers.gpus_per_pod
    pools = role_pools(spec.models)
    blocks = [block for pool in pools for block in pool_blocks(pool, capacity)]
    blocks += rollout_blocks(spec.models, capacity)
    pods = pack(blocks, capacity)
    return Layout(pools=tuple(pools), groups=group_pods(pods))


def reward_role(index: int, name: str | None) -> str:
    return f"reward-{name}" if name else f"reward-{index}"


def role_pools(models: ModelsSpec) -> list[Pool]:
    """The GPU pools of the model roles (rollout engines are handled by `rollout_blocks`)."""
    actor = Pool(("actor",), models.actor.gpus, models.actor.nodes, "spec.models.actor.gpus")
    others: list[tuple[str, RoleSpec | None, int, str]] = []
    if models.critic is not None:
        others.append(("critic", models.critic, models.critic.gpus, "spec.models.critic.gpus"))
    if models.reference is not None:
        others.append(("reference", models.reference, models.reference.gpus, "spec.models.reference.gpus"))
    for index, source in enumerate(models.reward):
        if source.model is not None:
            gpus = DEFAULT_REWARD_MODEL_GPUS if source.gpus is None else source.gpus
            others.append((reward_role(index, source.name), None, gpus, f"spec.models.reward[{index}].gpus"))

    if models.colocate.all:
        for _role, _, gpus, field in others:
            if gpus > actor.gpus:
                raise RenderError(
                    field,
                    f"{gpus} GPUs, but colocate.all time-slices every model on the actor's "
                    f"{actor.gpus} GPUs (spec.models.actor.gpus): use at most {actor.gpus}",
                )
        roles = ("actor", *(role for role, *_ in others), "rollout")
        return [Pool(roles, actor.gpus, actor.nodes, actor.field)]

    pools = [actor]
    rest = others
    if models.colocate.actor_reference:
        # Validation guarantees reference.gpus == actor.gpus.
        pools = [Pool(("actor", "reference"), actor.gpus, actor.nodes, actor.field)]
        rest = [entry for entry in rest if entry[0] != "reference"]
    if models.colocate.critic_reward:
        shared = [entry for entry in rest if entry[0] == "critic" or entry[0].startswith("reward-")]
        critic = models.critic
        assert critic is not None  # validation: colocate.criticReward needs a critic
        gpus = max(entry[2] for entry in shared)
        pools.append(Pool(tuple(entry[0] for entry in shared), gpus, critic.nodes, "spec.models.critic.gpus"))
        rest = [entry for entry in rest if entry not in shared]
    for role, role_spec, gpus, field in rest:
        pools.append(Pool((role,), gpus, role_spec.nodes if role_spec else 1, field))
    return pools


def pool_blocks(pool: Pool, capacity: int) -> list[Block]:
    """Cut a pool into blocks that each fit in one pod."""
    if pool.gpus == 0:
        return []
    if pool.nodes > 1:
        per_node = pool.gpus // pool.nodes  # validation: gpus is a multiple of nodes
        if per_node > capacity:
            raise RenderError(
                pool.field,
                f"{pool.gpus} GPUs over {pool.nodes} nodes is {per_node} per node, more than a pod holds "
                f"({WORKERS_FIELD}={capacity})",
            )
        return [Block(pool.roles, per_node)] * pool.nodes
    if pool.gpus <= capacity:
        return [Block(pool.roles, pool.gpus)]
    if pool.gpus % capacity:
        raise RenderError(
            pool.field,
            f"{pool.gpus} GPUs cannot be placed on pods of {capacity} GPUs ({WORKERS_FIELD}): "
            f"use at most {capacity} or a multiple of {capacity}",
        )
    return [Block(pool.roles, capacity)] * (pool.gpus // capacity)


def rollout_blocks(models: ModelsSpec, capacity: int) -> list[Block]:
    rollout = models.rollout
    if rollout.engine == "hf":
        # hf engines generate with transformers: one GPU each when the actor trains on GPUs.
        if models.colocate.all or models.actor.gpus == 0:
            return []
        return [Block(("rollout",), 1)] * rollout.engines
    tp = rollout.tensor_parallel_size
    if rollout.engines * tp == 0 or (models.colocate.all and models.actor.gpus == 0):
        raise RenderError(
            "spec.models.rollout.engine", "vllm engines need GPUs, but this layout gives them none"
        )
    if tp > capacity:
        raise RenderError(
            "spec.models.rollout.tensorParallelSize",
            f"a tensor-parallel group of {tp} GPUs must fit in one pod ({WORKERS_FIELD}={capacity})",
        )
    if models.colocate.all:
        # The engines live on the actor's GPUs: a TP group must not straddle two of its pods.
        if models.actor.gpus > capacity and capacity % tp:
            raise RenderError(
                "spec.models.rollout.tensorParallelSize",
                f"{tp} does not divide the {capacity} GPUs of a pod ({WORKERS_FIELD}), so with colocate.all "
                f"a tensor-parallel group would straddle two of the actor's pods",
            )
        return []
    return [Block(("rollout",), tp)] * rollout.engines


def pack(blocks: list[Block], capacity: int) -> list[list[Block]]:
    """First-fit decreasing: few pods, each at most `capacity` GPUs."""
    pods: list[list[Block]] = []
    free: list[int] = []
    for block in sorted(blocks, key=lambda b: b.gpus, reverse=True):
        for index, room in enumerate(free):
            if block.gpus <= room:
                pods[index].append(block)
                free[index] -= block.gpus
                break
        else:
            pods.append([block])
            free.append(capacity - block.gpus)
    return pods


def group_pods(pods: list[list[Block]]) -> tuple[WorkerGroup, ...]:
    """Pods with the same GPU count form one worker group, largest first."""
    by_size: dict[int, list[list[Block]]] = {}
    for pod in pods:
        by_size.setdefault(sum(block.gpus for block in pod), []).append(pod)
    groups = []
    for size in sorted(by_size, reverse=True):
        members = by_size[size]
        roles: list[str] = []
        for pod in members:
            for block in pod:
                roles += [role for role in block.roles if role not in roles]
        groups.append(
            WorkerGroup(name=f"gpu{size}", gpus_per_pod=size, replicas=len(members), roles=tuple(roles))
        )
    return tuple(groups)
