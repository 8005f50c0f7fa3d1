"""Which roles a job runs, started on a backend according to the placement plan."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .api.spec import RLHFJobSpec
from .backends.base import Backend, RoleGroup
from .backends.placement import (
    ACTOR,
    CRITIC,
    REFERENCE,
    ROLLOUT,
    PlacementPlan,
    WorkerPlacement,
    reward_model_role,
)
from .engine.device import DistributedContext


@dataclass
class Roles:
    actor: RoleGroup
    critic: RoleGroup | None = None
    reference: RoleGroup | None = None
    rollout: RoleGroup | None = None
    """Separate rollout engines; None when the actor generates."""
    reward_models: dict[int, RoleGroup] = field(default_factory=dict)
    """Reward-model roles by their index in spec.models.reward."""

    @property
    def generator(self) -> RoleGroup:
        return self.rollout or self.actor

    def all(self) -> list[RoleGroup]:
        groups = [self.actor, self.critic, self.reference, self.rollout, *self.reward_models.values()]
        return [g for g in groups if g is not None]


def role_threads(placement: WorkerPlacement, num_threads: int, plan_cpus: float, overlapped: bool) -> int:
    """torch threads of a CPU worker. Roles that take turns (the synchronous loop) may each use all
    `num_threads` cores; roles that run at the same time (stage overlap) get the cores their
    placement holds, their share of the plan's CPUs, so no two roles' threads fight for a core."""
    if num_threads <= 0 or placement.num_gpus > 0 or not overlapped or plan_cpus <= 0:
        return num_threads
    return max(1, int(num_threads * placement.num_cpus / plan_cpus + 1e-6))


def _contexts(
    backend: Backend,
    placements: tuple[WorkerPlacement, ...],
    num_threads: int,
    process_group: bool,
    threads: Callable[[WorkerPlacement], int] | None = None,
) -> list[DistributedContext]:
    """Data-parallel workers share one process group; replicas (rollout engines, reward models)
    are independent and only use their rank as the replica index (it offsets their seeds)."""
    if threads is None:

        def threads(_: WorkerPlacement) -> int:
            return num_threads

    if not process_group:
        return [
            DistributedContext(rank=i, use_gpu=p.num_gpus > 0, num_threads=threads(p))
            for i, p in enumerate(placements)
        ]
    addr, port = backend.rendezvous(placements[0], len(placements))
    if num_threads > 0:  # CPU ranks of one role compute at the same time: they split the cores
        num_threads = max(1, num_threads // len(placements))
    return [
        DistributedContext(
            rank=rank,
            world_size=len(placements),
            master_addr=addr,
            master_port=port,
            use_gpu=placement.num_gpus > 0,
            num_threads=threads(placement),
        )
        for rank, placement in enumerate(placements)
    ]


def start_roles(spec: RLHFJobSpec, backend: Backend, plan: PlacementPlan, num_threads: int = 0) -> Roles:
    """Start every role's workers (in parallel on Ray) and wait until all are ready."""
    from .roles.actor import ActorRole
    from .roles.critic import CriticRole
    from .roles.reference import ReferenceRole
    from .roles.reward_model import RewardModelRole
    from .roles.rollout import RolloutRole

    plan_cpus = sum(bundle.get("CPU", 0.0) for bundle in plan.bundles)
    overlapped = spec.training.max_staleness > 0 and ROLLOUT in plan.roles

    def start(name: str, cls: type, make_args, process_group: bool = True) -> RoleGroup:
        placements = plan.roles[name]
        contexts = _contexts(
            backend,
            placements,
            num_threads,
            process_group,
            lambda p: role_threads(p, num_threads, plan_cpus, overlapped),
        )
        return backend.start_role(name, cls, [make_args(ctx) for ctx in contexts], placements, contexts)

    generates = ROLLOUT not in plan.roles
    roles = Roles(actor=start(ACTOR, ActorRole, lambda ctx: (spec, ctx, generates)))
    if CRITIC in plan.roles:
        roles.critic = start(CRITIC, CriticRole, lambda ctx: (spec, ctx))
    if REFERENCE in plan.roles:
        roles.reference = start(REFERENCE, ReferenceRole, lambda ctx: (spec, ctx))
    if ROLLOUT in plan.roles:
        roles.rollout = start(ROLLOUT, RolloutRole, lambda ctx: (spec, ctx), process_group=False)
    for index, source in enumerate(spec.models.reward):
        name = reward_model_role(index)
        if name in plan.roles:
            field_path = f"spec.models.reward[{index}].model"
            roles.reward_models[index] = start(
                name, RewardModelRole, lambda ctx, s=source, f=field_path: (s, ctx, f), process_group=False
            )
    backend.wait_ready(roles.all())
    return roles
