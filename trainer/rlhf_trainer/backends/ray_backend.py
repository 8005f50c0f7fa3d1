"""The Ray backend: each role worker is a Ray actor in its own process, placed in a placement
group built from the plan (GPU bundles, or CPU-only bundles when the job has no GPUs)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from ..engine.device import DistributedContext
from .base import Backend, RoleGroup
from .placement import PlacementPlan, WorkerPlacement

log = logging.getLogger(__name__)

PLACEMENT_LOG_EVERY_S = 30
PLACEMENT_TIMEOUT_S = 1800
CLOSE_TIMEOUT_S = 60

# Worker processes inherit these; DS_ACCELERATOR must be set before deepspeed is imported there.
WORKER_ENV = ("DS_ACCELERATOR", "DS_BUILD_OPS", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE", "PYTHONPATH")


def worker_environment() -> dict[str, str]:
    env = {key: os.environ[key] for key in WORKER_ENV if key in os.environ}
    # Role processes share the cores and take turns: OpenMP threads that spin after their work
    # steal the cores the next role needs (measured: 4x slower steps on 2 cores without this).
    env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY") or "PASSIVE"
    return env


def ray_init_options(num_cpus: int | None, log_to_driver: bool = False) -> dict[str, Any]:
    """Arguments of ray.init for a local cluster (the runner and the tests use the same)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return {
        "num_cpus": num_cpus,
        "include_dashboard": False,
        "log_to_driver": log_to_driver,
        "runtime_env": {"env_vars": worker_environment()},
        "configure_logging": False,
    }


def start_ray(num_cpus: int | None, log_to_driver: bool = False) -> bool:
    """Connect to the cluster in RAY_ADDRESS (a RayJob), reuse one already started in this process,
    or start a local one. Returns True when this call started it (and should stop it)."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(
            address=os.environ["RAY_ADDRESS"],
            runtime_env={"env_vars": worker_environment()},
            log_to_driver=log_to_driver,
        )
        return True
    ray.init(**ray_init_options(num_cpus, log_to_driver))
    return True


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def _free_address() -> tuple[str, int]:
    from ..engine.device import free_port, node_address

    return node_address(), free_port()


class RayBackend(Backend):
    remote = True

    def __init__(self, plan: PlacementPlan) -> None:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group

        self._ray = ray
        self.plan = plan
        self._actors: list[Any] = []
        self._check_fits(plan)
        self.group = placement_group(list(plan.bundles), strategy="PACK")
        waited = 0
        while True:  # a cluster may still be scaling up its GPU workers: say so while waiting
            ready, _ = ray.wait([self.group.ready()], timeout=PLACEMENT_LOG_EVERY_S)
            if ready:
                break
            waited += PLACEMENT_LOG_EVERY_S
            if waited >= PLACEMENT_TIMEOUT_S:
                remove_placement_group(self.group)
                raise RuntimeError(
                    f"placement group {list(plan.bundles)} not placed after {waited}s; "
                    f"cluster resources: {ray.cluster_resources()}"
                )
            log.info(
                "waiting %ds for resources %s (cluster: %s)",
                waited,
                list(plan.bundles),
                ray.available_resources(),
            )

    def _check_fits(self, plan: PlacementPlan) -> None:
        """A local cluster cannot grow: fail at once when the bundles need more than it has."""
        if os.environ.get("RAY_ADDRESS"):
            return
        total = self._ray.cluster_resources()
        for resource in ("CPU", "GPU"):
            wanted = sum(bundle.get(resource, 0.0) for bundle in plan.bundles)
            if wanted > total.get(resource, 0.0) + 1e-9:
                raise RuntimeError(
                    f"the roles need {wanted:g} {resource}s in all, this Ray cluster has {total.get(resource, 0.0):g}"
                )

    def _options(self, placement: WorkerPlacement) -> dict[str, Any]:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return {
            "num_cpus": placement.num_cpus,
            "num_gpus": placement.num_gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.group, placement_group_bundle_index=placement.bundle
            ),
        }

    def rendezvous(self, placement: WorkerPlacement, world_size: int) -> tuple[str, int]:
        """Address and free port on the node of a role's rank 0, for its process group."""
        if world_size == 1:
            return "127.0.0.1", 0  # the worker picks its own port
        probe = self._ray.remote(_free_address).options(**self._options(placement))
        return self._ray.get(probe.remote())

    def start_role(
        self,
        name: str,
        cls: type,
        args: Sequence[tuple[Any, ...]],
        placements: Sequence[WorkerPlacement],
        dist: Sequence[DistributedContext],
    ) -> RoleGroup:
        remote_cls = self._ray.remote(cls)
        workers = [
            remote_cls.options(name=None, **self._options(placement)).remote(*worker_args)
            for worker_args, placement in zip(args, placements, strict=True)
        ]
        self._actors.extend(workers)
        return RoleGroup(name, workers, self)

    def wait_ready(self, groups: Sequence[RoleGroup]) -> None:
        # All roles load their models at the same time; a failure names its role.
        pending = {group.name: [w.ready.remote() for w in group.workers] for group in groups}
        for name, refs in pending.items():
            try:
                self._ray.get(refs)
            except self._ray.exceptions.RayError as exc:
                raise RuntimeError(f"role {name} failed to start: {exc}") from exc

    def submit(self, worker: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return getattr(worker, method).remote(*args, **kwargs)

    def get(self, pending: list[Any]) -> list[Any]:
        return self._ray.get(pending)

    def put(self, value: Any) -> Any:
        return self._ray.put(value)

    def shutdown(self) -> None:
        """Let roles that hold engines stop them (`close`: no shared memory or processes left
        behind), then end every role's process and free the placement group."""
        from ray.util.placement_group import remove_placement_group

        closing = [actor.close.remote() for actor in self._actors if hasattr(actor, "close")]
        if closing:
            done, late = self._ray.wait(closing, num_returns=len(closing), timeout=CLOSE_TIMEOUT_S)
            for ref in done:
                try:
                    self._ray.get(ref)
                except self._ray.exceptions.RayError as exc:  # a role that already died
                    log.warning("closing a role failed: %s", exc)
            if late:
                log.warning("%d role(s) did not close within %ds; ending them", len(late), CLOSE_TIMEOUT_S)
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []
        remove_placement_group(self.group)
