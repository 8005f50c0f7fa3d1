"""Where each role's workers go: placement-group bundles from the GPU counts and colocation.

A pure function of the spec, so the layout can be read and tested without Ray. Training and
inference roles get one worker per GPU (one on CPU when gpus is 0); colocated roles share the
bundles of the role they are colocated with, each taking an equal fraction of the bundle's GPU
and CPU. A CPU-only job gets CPU bundles that together fit in the CPUs Ray was given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..api.spec import RLHFJobSpec

ACTOR, CRITIC, REFERENCE, ROLLOUT = "actor", "critic", "reference", "rollout"


def reward_model_role(index: int) -> str:
    return f"reward_model_{index}"


@dataclass(frozen=True)
class WorkerPlacement:
    bundle: int
    num_gpus: float
    num_cpus: float


@dataclass(frozen=True)
class PlacementPlan:
    bundles: tuple[dict[str, float], ...]
    roles: dict[str, tuple[WorkerPlacement, ...]]

    @property
    def uses_gpus(self) -> bool:
        return any(bundle.get("GPU", 0) > 0 for bundle in self.bundles)


def uses_reference(spec: RLHFJobSpec) -> bool:
    """A reference model is loaded only when the KL term needs it."""
    return spec.models.reference is not None and spec.algorithm.kl.coef > 0


def reward_model_gpus(spec: RLHFJobSpec, index: int) -> int:
    """A reward model's GPUs: as declared; unset, 1 in a GPU job and 0 in a CPU job (actor.gpus 0)."""
    declared = spec.models.reward[index].gpus
    if declared is not None:
        return declared
    return 1 if spec.models.actor.gpus > 0 else 0


def rollout_engines(spec: RLHFJobSpec) -> int:
    """Separate rollout engines; 0 means the actor generates (hf engine with engines: 0)."""
    return spec.models.rollout.engines


def role_gpus(spec: RLHFJobSpec) -> dict[str, tuple[int, int]]:
    """(workers, GPUs per worker) of every role the job runs."""
    def training(gpus: int) -> tuple[int, int]:
        return (gpus, 1) if gpus > 0 else (1, 0)

    models = spec.models
    roles = {ACTOR: training(models.actor.gpus)}
    if models.critic is not None:
        roles[CRITIC] = training(models.critic.gpus)
    if uses_reference(spec):
        assert models.reference is not None
        roles[REFERENCE] = training(models.reference.gpus)
    for index, source in enumerate(models.reward):
        if source.model is not None:
            roles[reward_model_role(index)] = training(reward_model_gpus(spec, index))
    engines = rollout_engines(spec)
    if engines:
        per_engine = models.rollout.tensor_parallel_size if models.actor.gpus > 0 else 0
        if models.rollout.engine == "hf" and models.actor.gpus > 0:
            per_engine = 1
        roles[ROLLOUT] = (engines, per_engine)
    return roles


def _host(spec: RLHFJobSpec, role: str) -> str:
    """The role whose bundles `role` shares (itself when not colocated)."""
    colocate = spec.models.colocate
    if role == ACTOR:
        return ACTOR
    if colocate.all:
        return ACTOR
    if role == REFERENCE and colocate.actor_reference:
        return ACTOR
    if role.startswith("reward_model_") and colocate.critic_reward and CRITIC in role_gpus(spec):
        return CRITIC
    return role


def plan_placement(spec: RLHFJobSpec, cpus: float) -> PlacementPlan:
    """Bundles and per-worker resources for every role. `cpus`: CPUs Ray may use (CPU-only jobs)."""
    roles = role_gpus(spec)
    bundles: list[dict[str, float]] = []
    first_bundle: dict[str, int] = {}
    bundle_count: dict[str, int] = {}
    # Hosts first, so a colocated role finds its host's bundles.
    for role in sorted(roles, key=lambda r: _host(spec, r) != r):
        host = _host(spec, role)
        if host != role:
            continue
        workers, gpus_each = roles[role]
        first_bundle[role] = len(bundles)
        bundle_count[role] = workers
        for _ in range(workers):
            bundles.append({"GPU": float(gpus_each), "CPU": 1.0} if gpus_each else {"CPU": 1.0})

    # Workers per bundle, to split its resources evenly.
    sharing = [0] * len(bundles)
    assignments: dict[str, list[int]] = {}
    for role, (workers, _) in roles.items():
        host = _host(spec, role)
        indices = [first_bundle[host] + i % bundle_count[host] for i in range(workers)]
        assignments[role] = indices
        for index in indices:
            sharing[index] += 1

    gpu_job = any(b.get("GPU", 0) > 0 for b in bundles)
    if not gpu_job:
        # CPU-only: the bundles together take at most the CPUs Ray has.
        # Rounded down: rounding up could ask for a hair more than the cluster has.
        per_bundle = math.floor(min(1.0, cpus / max(1, len(bundles))) * 1e4) / 1e4
        bundles = [{"CPU": per_bundle} for _ in bundles]

    placements: dict[str, tuple[WorkerPlacement, ...]] = {}
    for role, indices in assignments.items():
        gpus_each = roles[role][1]
        placements[role] = tuple(
            WorkerPlacement(
                bundle=index,
                num_gpus=_share(bundles[index].get("GPU", 0.0), sharing[index]) if gpus_each else 0.0,
                num_cpus=_share(bundles[index]["CPU"], sharing[index]),
            )
            for index in indices
        )
    return PlacementPlan(bundles=tuple(bundles), roles=placements)


def _share(amount: float, workers: int) -> float:
    """Each of `workers` gets an equal part of `amount`, rounded down so the parts fit together."""
    return math.floor(amount / workers * 1e4) / 1e4
