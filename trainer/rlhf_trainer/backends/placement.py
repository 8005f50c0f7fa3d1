"""Where each role's workers go: the job's role layout (`api.layout`, the one owner of the GPU
rules) turned into placement-group bundles.

A pure function of the spec, so it can be read and tested without Ray. Each role that owns GPUs
gets one bundle per worker (its GPUs, one CPU; one CPU when the role runs on CPU); a role that
shares another's GPUs puts its i-th worker on that role's i-th bundle (modulo its bundle count),
and the workers on one bundle each take an equal fraction of its GPU and CPU. A CPU-only job gets
CPU bundles that together fit in the CPUs Ray was given. The ranks of a CPU role with several
ranks (`cpuRanks`) each also ask for one unit of CPU_RANK_RESOURCE when the job runs on the
operator's pods (one rank per pod); on a local Ray cluster they share its CPUs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from ..api.layout import (
    ACTOR,
    CPU_RANK_PODS_ENV,
    CPU_RANK_RESOURCE,
    CRITIC,
    REFERENCE,
    ROLLOUT,
    JobLayout,
    plan_roles,
    reward_model_role,
    uses_reference,
)
from ..api.spec import RLHFJobSpec

__all__ = [
    "ACTOR",
    "CRITIC",
    "REFERENCE",
    "ROLLOUT",
    "PlacementPlan",
    "WorkerPlacement",
    "plan_placement",
    "reward_model_role",
    "role_gpus",
    "uses_reference",
]


@dataclass(frozen=True)
class WorkerPlacement:
    bundle: int
    num_gpus: float
    num_cpus: float


@dataclass(frozen=True)
class PlacementPlan:
    bundles: tuple[dict[str, float], ...]
    roles: dict[str, tuple[WorkerPlacement, ...]]
    pool_bundles: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Per role: the bundles of the pool it sits in (its own, or those of the role it shares)."""

    @property
    def uses_gpus(self) -> bool:
        return any(bundle.get("GPU", 0) > 0 for bundle in self.bundles)


def role_gpus(spec: RLHFJobSpec) -> dict[str, tuple[int, int]]:
    """(workers, GPUs per worker) of every role the job runs."""
    return {role.name: (role.workers, role.gpus_per_worker) for role in plan_roles(spec)}


def plan_placement(spec: RLHFJobSpec, cpus: float, rank_pods: bool | None = None) -> PlacementPlan:
    """Bundles and per-worker resources for every role. `cpus`: CPUs Ray may use (CPU-only jobs).
    `rank_pods`: CPU ranks sit one per worker pod (None: as the operator's env var on the head says)."""
    if rank_pods is None:
        rank_pods = os.environ.get(CPU_RANK_PODS_ENV) == "1"
    return bundles_of(plan_roles(spec), cpus, rank_pods)


def bundles_of(layout: JobLayout, cpus: float, rank_pods: bool = False) -> PlacementPlan:
    """The placement of a role layout (hosts come before the roles that share them)."""
    bundles: list[dict[str, float]] = []
    own: dict[str, tuple[int, ...]] = {}
    for host in layout.hosts():
        start = len(bundles)
        for _ in range(host.workers):
            each = host.gpus_per_worker
            bundles.append({"GPU": float(each), "CPU": 1.0} if each else {"CPU": 1.0})
        own[host.name] = tuple(range(start, len(bundles)))

    # Workers per bundle, to split its resources evenly.
    sharing = [0] * len(bundles)
    assignments: dict[str, list[int]] = {}
    for role in layout:
        pool = own[role.host]
        assignments[role.name] = [pool[i % len(pool)] for i in range(role.workers)]
        for index in assignments[role.name]:
            sharing[index] += 1

    if not any(b.get("GPU", 0) > 0 for b in bundles):
        # CPU-only: the bundles together take at most the CPUs Ray has.
        # Rounded down: rounding up could ask for a hair more than the cluster has.
        per_bundle = math.floor(min(1.0, cpus / max(1, len(bundles))) * 1e4) / 1e4
        bundles = [{"CPU": per_bundle} for _ in bundles]
    if rank_pods:
        for host in layout.cpu_rank_hosts():
            for index in own[host.name]:
                bundles[index][CPU_RANK_RESOURCE] = 1.0

    placements: dict[str, tuple[WorkerPlacement, ...]] = {}
    for role in layout:
        placements[role.name] = tuple(
            WorkerPlacement(
                bundle=index,
                num_gpus=_share(bundles[index].get("GPU", 0.0), sharing[index])
                if role.gpus_per_worker
                else 0.0,
                num_cpus=_share(bundles[index]["CPU"], sharing[index]),
            )
            for index in assignments[role.name]
        )
    pools = {role.name: own[role.host] for role in layout}
    return PlacementPlan(bundles=tuple(bundles), roles=placements, pool_bundles=pools)


def _share(amount: float, workers: int) -> float:
    """Each of `workers` gets an equal part of `amount`, rounded down so the parts fit together."""
    return math.floor(amount / workers * 1e4) / 1e4
