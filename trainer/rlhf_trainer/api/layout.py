"""The role layout of a job: the one place that decides which roles run, with how many workers,
how many GPUs each, and which roles share GPUs. Pure and torch-free.

The operator packs this layout into worker pods (`rlhf_operator.placement`); the trainer turns
it into Ray placement-group bundles (`rlhf_trainer.backends.placement`). Neither decides GPUs
on its own, so the GPUs the pods request are the GPUs the trainer places.

Rules, in the words of the field descriptions:
- A training or inference model (actor, critic, reference, reward model) with `gpus: N > 0`
  runs N workers of one GPU each; with `gpus: 0` `cpuRanks` CPU workers (1 unless set: a
  development knob; the operator puts each of several CPU ranks in its own worker pod).
- The reference runs only when `algorithm.kl.coef > 0`. Without `models.reference` it is a
  frozen copy of the actor's model, placed with the actor (`with_defaults` writes it out).
- A reward model's unset `gpus` is 1 in a GPU job (actor.gpus > 0) and 0 in a CPU job; when it
  shares another role's GPUs it is at most that role's GPUs.
- Rollout engines (`rollout.engines` of them; 0 with hf means the actor generates) take
  `tensorParallelSize` GPUs each (vllm) or one (hf) when the actor has GPUs, none otherwise.
- Colocation: `colocate.all` puts every role on the actor's GPUs; `colocate.actorReference`
  the reference; `colocate.criticReward` the reward models on the critic's GPUs. A role that
  shares GPUs adds none: its host's GPUs are the pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .spec import RLHFJobSpec, RoleSpec
from .stages import layout_view

ACTOR, CRITIC, REFERENCE, ROLLOUT = "actor", "critic", "reference", "rollout"
REWARD_MODEL_PREFIX = "reward_model_"
# A role on CPU with several ranks (`cpuRanks`) runs one rank per worker pod in a cluster: each
# such pod offers one unit of this Ray resource, and the trainer's bundle of each rank asks for it
# when the operator says the pods exist (this env var on the head), so no two ranks share a pod.
CPU_RANK_RESOURCE = "rlhf_cpu_rank"
CPU_RANK_PODS_ENV = "RLHF_CPU_RANK_PODS"
# The most GPUs one job may hold (every pool together): far above any real RLHF job, and a bound
# on what the operator renders and packs for a manifest of a few lines.
MAX_JOB_GPUS = 4096


def reward_model_role(index: int) -> str:
    """The role of `spec.models.reward[index]` when it is a reward model."""
    return f"{REWARD_MODEL_PREFIX}{index}"


@dataclass(frozen=True)
class RoleLayout:
    name: str
    """Canonical role name: actor, critic, reference, reward_model_<i>, rollout."""
    workers: int
    gpus_per_worker: int
    nodes: int
    """Nodes the role's GPUs are spread over (one block of GPUs per node)."""
    shares_with: str | None
    """The role whose GPUs this one shares (it adds none of its own); None: its own pool."""
    field: str
    """The spec path that sets the role's GPUs, named in errors."""

    @property
    def gpus(self) -> int:
        return self.workers * self.gpus_per_worker

    @property
    def host(self) -> str:
        return self.shares_with or self.name


@dataclass(frozen=True)
class JobLayout:
    roles: tuple[RoleLayout, ...]
    """Hosts before the roles that share their GPUs, in a stable order."""

    def __iter__(self) -> Iterator[RoleLayout]:
        return iter(self.roles)

    def __contains__(self, name: object) -> bool:
        return any(role.name == name for role in self.roles)

    def __getitem__(self, name: str) -> RoleLayout:
        for role in self.roles:
            if role.name == name:
                return role
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(role.name for role in self.roles)

    def hosts(self) -> tuple[RoleLayout, ...]:
        """The roles that own GPUs (or CPU slots): one pool each."""
        return tuple(role for role in self.roles if role.shares_with is None)

    def pool(self, host: str) -> tuple[str, ...]:
        """The roles in `host`'s pool, the host first."""
        return tuple(role.name for role in self.roles if role.host == host)

    @property
    def total_gpus(self) -> int:
        return sum(role.gpus for role in self.hosts())

    def cpu_rank_hosts(self) -> tuple[RoleLayout, ...]:
        """Pools of a CPU role with several ranks: one worker pod per rank in a cluster."""
        return tuple(role for role in self.hosts() if role.gpus_per_worker == 0 and role.workers > 1)

    def describe(self) -> list[str]:
        """One line per role: what `rlhf render --layout` prints."""
        lines = []
        for role in self.roles:
            unit = f"{role.gpus_per_worker} GPU" if role.gpus_per_worker else "CPU"
            where = f"shares {role.shares_with}'s GPUs" if role.shares_with else f"{role.gpus} GPUs"
            nodes = f" over {role.nodes} nodes" if role.nodes > 1 else ""
            lines.append(f"{role.name}: {role.workers} worker(s) x {unit}, {where}{nodes}  ({role.field})")
        return lines


class LayoutError(ValueError):
    """A layout that cannot run; the message starts with the field at fault."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def uses_reference(spec: RLHFJobSpec) -> bool:
    """A reference model is loaded only when the KL term needs it."""
    return spec.algorithm.kl.coef > 0


def default_reference(actor: RoleSpec) -> RoleSpec:
    """The reference a KL term gets when none is named: a frozen copy of the actor's model on
    the actor's GPUs (no optimizer, so nothing of it to offload; no backward, so no recompute)."""
    return actor.model_copy(
        update={
            "gradient_checkpointing": False,
            "offload": actor.offload.model_copy(update={"optimizer": False}),
        }
    )


def with_defaults(spec: RLHFJobSpec) -> RLHFJobSpec:
    """The spec as the job runs it: a KL term without `models.reference` gets the default
    reference, colocated with the actor. Idempotent; the result validates as written."""
    models = spec.models
    if models.reference is not None or not uses_reference(spec):
        return spec
    colocate = models.colocate.model_copy(update={"actor_reference": True})
    models = models.model_copy(update={"reference": default_reference(models.actor), "colocate": colocate})
    return spec.model_copy(update={"models": models})


def reward_model_gpus(spec: RLHFJobSpec, index: int) -> int:
    """A reward model's GPUs: as declared; unset, 1 in a GPU job and 0 in a CPU job, at most the
    GPUs of the role it shares."""
    declared = spec.models.reward[index].gpus
    if declared is not None:
        return declared
    default = 1 if spec.models.actor.gpus > 0 else 0
    colocate = spec.models.colocate
    if colocate.all:
        return min(default, spec.models.actor.gpus)
    if colocate.critic_reward and spec.models.critic is not None:
        return min(default, spec.models.critic.gpus)
    return default


def plan_roles(spec: RLHFJobSpec) -> JobLayout:
    """The layout of every role the job runs (defaults applied)."""
    spec = layout_view(spec)  # an offline stage runs only its trained model's workers
    # The default reference is sized by the actor: errors about its GPUs name the actor's field.
    reference_field = "spec.models.reference.gpus" if spec.models.reference else "spec.models.actor.gpus"
    spec = with_defaults(spec)
    models = spec.models
    colocate = models.colocate

    def model_role(name: str, role: RoleSpec, field: str, shares: str | None) -> RoleLayout:
        if role.gpus == 0 and role.cpu_ranks > 1:
            field = field.removesuffix(".gpus") + ".cpuRanks"
        workers, each = (role.gpus, 1) if role.gpus > 0 else (role.cpu_ranks, 0)
        return RoleLayout(name, workers, each, role.nodes, shares, field)

    on_actor = ACTOR if colocate.all else None
    roles = [model_role(ACTOR, models.actor, "spec.models.actor.gpus", None)]
    if models.critic is not None:
        roles.append(model_role(CRITIC, models.critic, "spec.models.critic.gpus", on_actor))
    if uses_reference(spec):
        assert models.reference is not None  # with_defaults
        shares = ACTOR if colocate.actor_reference or colocate.all else None
        roles.append(model_role(REFERENCE, models.reference, reference_field, shares))
    reward_host = on_actor or (CRITIC if colocate.critic_reward and models.critic is not None else None)
    for index, source in enumerate(models.reward):
        if source.model is None:
            continue
        gpus = reward_model_gpus(spec, index)
        workers, each = (gpus, 1) if gpus > 0 else (1, 0)
        field = f"spec.models.reward[{index}].gpus"
        roles.append(RoleLayout(reward_model_role(index), workers, each, 1, reward_host, field))
    rollout = models.rollout
    if rollout.engines > 0:
        each = 0
        if models.actor.gpus > 0:
            each = rollout.tensor_parallel_size if rollout.engine == "vllm" else 1
        roles.append(RoleLayout(ROLLOUT, rollout.engines, each, 1, on_actor, "spec.models.rollout.engines"))
    # Hosts first: a role that shares GPUs finds its host already placed.
    roles.sort(key=lambda role: role.shares_with is not None)
    return JobLayout(tuple(roles))


def check_layout(layout: JobLayout) -> None:
    """LayoutError when the job holds more GPUs than any job may (checked before anything is
    packed or rendered, so a short manifest cannot cost minutes)."""
    total = layout.total_gpus
    if total > MAX_JOB_GPUS:
        largest = max(layout.hosts(), key=lambda role: role.gpus)
        raise LayoutError(
            largest.field,
            f"the job's roles need {total} GPUs in total, more than the {MAX_JOB_GPUS} a job may use",
        )


__all__ = [
    "ACTOR",
    "CPU_RANK_PODS_ENV",
    "CPU_RANK_RESOURCE",
    "CRITIC",
    "MAX_JOB_GPUS",
    "REFERENCE",
    "ROLLOUT",
    "JobLayout",
    "LayoutError",
    "RoleLayout",
    "check_layout",
    "default_reference",
    "plan_roles",
    "reward_model_gpus",
    "reward_model_role",
    "uses_reference",
    "with_defaults",
]
