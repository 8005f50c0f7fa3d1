"""Run a job: `rlhf run JOB.yaml` (run_manifest) and `rlhf train --config FILE` (run_config_file)
share one path: preflight -> backend -> roles -> resume -> RL loop -> summary."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import yaml

from .api.job import RLHFJob, TrainerConfig
from .api.stages import is_offline
from .api.validation import InvalidJobError, load_model
from .engine.device import prepare_environment
from .failures import report_failure

if TYPE_CHECKING:
    from .api.spec import RLHFJobSpec
    from .backends.base import Backend, RoleGroup
    from .backends.placement import PlacementPlan
    from .checkpoint_store import CheckpointStore
    from .loop import RLLoop
    from .preflight import Prepared
    from .role_groups import Roles
    from .telemetry import Telemetry

log = logging.getLogger("rlhf_trainer")


@dataclass(frozen=True)
class RunSummary:
    steps: int
    rewards: tuple[float, ...]
    """reward/mean of the steps this run made."""
    step_seconds: tuple[float, ...]
    seconds: float
    metrics_path: str
    plot_path: str
    checkpoint: str | None
    hf_export: str | None
    stopped: bool = False

    def lines(self) -> list[str]:
        median = sorted(self.step_seconds)[len(self.step_seconds) // 2] if self.step_seconds else 0.0
        out = [
            f"finished: {self.steps} steps in {self.seconds:.1f}s (start-up included; median step {median:.2f}s)"
        ]
        if self.rewards:
            k = min(5, len(self.rewards))
            first, last = sum(self.rewards[:k]) / k, sum(self.rewards[-k:]) / k
            out.append(
                f"reward/mean: first step {self.rewards[0]:.3f}, last step {self.rewards[-1]:.3f}; "
                f"mean of first {k} {first:.3f} -> last {k} {last:.3f}"
            )
        out += [
            f"metrics:    {self.metrics_path}",
            f"plot:       {self.plot_path}",
        ]
        if self.checkpoint:
            out.append(f"checkpoint: {self.checkpoint}")
        if self.hf_export:
            out.append(f"HF model:   {self.hf_export}")
        return out


def run_manifest(job: RLHFJob, output_dir: str | None, backend: str, metrics_port: int) -> int:
    """`rlhf run`: the job on this machine (embedded Ray, or in-process with backend local)."""
    if job.kind == "RLHFPipeline":
        from .stages.pipeline import run_pipeline

        return run_pipeline(job, output_dir, backend, metrics_port)
    config = TrainerConfig(
        job_name=job.metadata.name,
        namespace=job.metadata.namespace or "default",
        spec=job.spec,
        output_dir=output_dir or os.path.join("runs", job.metadata.name),
        status_sink="file",
        metrics_port=metrics_port,
        backend=backend,
    )
    return run_trainer(config)


def run_config_file(path: str) -> int:
    """`rlhf train --config FILE`: a TrainerConfig (wire keys) as the operator renders it."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
        config = load_model(TrainerConfig, data, source=path)
    except (OSError, yaml.YAMLError) as exc:
        print(f"{path}: cannot read: {exc}", file=sys.stderr)
        return 1
    except InvalidJobError as exc:
        for error in exc.errors:
            print(f"{error}  [{path}]", file=sys.stderr)
        from .telemetry.telemetry import record_failure_in, sink_from_raw_config

        located = sink_from_raw_config(data)
        if located is not None:
            record_failure_in(
                located[0],
                located[1],
                permanent=True,
                reason="InvalidConfig",
                message="; ".join(map(str, exc.errors)),
            )
        return 1
    return run_trainer(config)


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rlhf_trainer").setLevel(logging.INFO)


def run_trainer(config: TrainerConfig) -> int:
    """Preflight, then train. Returns the exit code: 1 with the problems on stderr when a check
    fails (nothing started), 1 when training fails, 0 when it finishes. A failure is also written
    to status.failure; errors of the job's configuration (every preflight error, and the reward,
    data, batch and checkpoint configuration errors raised on the driver after it) are
    `permanent`: the operator does not retry them."""
    _configure_logging()
    if is_offline(config.spec.algorithm.name):
        from .stages.runner import run_stage

        return run_stage(config)
    use_gpu = any(
        r.gpus > 0
        for r in (config.spec.models.actor, config.spec.models.critic, config.spec.models.reference)
        if r is not None
    )
    prepare_environment(use_gpu)

    from .preflight import PreflightError, preflight
    from .telemetry import record_failure

    try:
        prepared = preflight(config.spec, config.backend, config.resume_from)
    except PreflightError as exc:
        for error in exc.errors:
            print(str(error), file=sys.stderr)
        record_failure(
            config, permanent=True, reason="PreflightFailed", message="; ".join(map(str, exc.errors))
        )
        return 1
    try:
        summary = _train(config, prepared)
    except Exception as exc:
        failure = report_failure(exc, config.output_dir)
        record_failure(config, permanent=failure.permanent, reason=failure.reason, message=failure.message)
        return 1
    for line in summary.lines():
        print(line)
    if summary.stopped:
        from .lifecycle import STOPPED_EXIT_CODE

        print(f"stopped on SIGTERM after step {summary.steps}: resume continues from {summary.checkpoint}")
        return STOPPED_EXIT_CODE
    return 0


def _start_backend(kind: str, spec: RLHFJobSpec) -> tuple[Backend, PlacementPlan, int, Callable[[], None]]:
    """(backend, placement plan, torch threads per CPU role, stop) for `rlhf run --backend`."""
    from .backends.placement import plan_placement

    if kind == "local":
        from .backends.local import LocalBackend

        return LocalBackend(), plan_placement(spec, cpus=float(os.cpu_count() or 1)), 0, lambda: None
    import ray

    from .backends.ray_backend import RayBackend, cluster_cpus, start_ray

    started = start_ray(num_cpus=os.cpu_count())
    stop = ray.shutdown if started else (lambda: None)
    try:
        cpus = cluster_cpus()
        plan = plan_placement(spec, cpus=cpus)
        backend = RayBackend(plan)
    except BaseException:
        stop()
        raise
    # The loop is synchronous: roles take turns, so each CPU role may use every core while it runs.
    return backend, plan, (0 if plan.uses_gpus else max(1, int(cpus))), stop


def _train(config: TrainerConfig, prepared: Prepared) -> RunSummary:
    from .checkpoint import Checkpointer
    from .lifecycle import StopRequest, open_store
    from .loop import RLLoop
    from .rewards import build_rewards
    from .role_groups import start_roles
    from .telemetry import Telemetry

    started = time.perf_counter()
    spec = prepared.spec
    stop_request = StopRequest()
    backend, plan, num_threads, stop = _start_backend(config.backend, spec)
    # From here on SIGTERM means: finish the step, commit, exit. Installed after the backend:
    # ray.init puts in Ray's own SIGTERM handler, which aborts the driver.
    stop_request.install()
    telemetry = None
    success = False
    try:
        roles = start_roles(spec, backend, plan, num_threads=num_threads)
        log.info(
            "roles ready after %.1fs: %s",
            time.perf_counter() - started,
            ", ".join(f"{g.name} x{g.size}" for g in roles.all()),
        )
        scorers = {index: _role_scorer(backend, group) for index, group in roles.reward_models.items()}
        rewards = build_rewards(spec, model_scorers=scorers)
        rewards.preflight()
        telemetry = Telemetry(config, spec.training.max_steps, spec.algorithm.name)
        store = open_store(config)
        if store is not None:
            telemetry.run = store.run
        checkpointer = (
            Checkpointer(spec.checkpoint, spec.training.max_steps, store)
            if spec.checkpoint and store
            else None
        )
        loop = RLLoop(
            spec,
            roles,
            backend,
            rewards,
            prepared.dataset,
            prepared.tokenizer,
            telemetry,
            checkpointer,
            prepared.eval_dataset,
        )
        loop.stop_requested = lambda: stop_request.requested
        start_step = _resume(config, prepared, store, roles, backend, loop, telemetry)
        result = loop.run(start_step)
        success = True
    finally:
        stop_request.uninstall()
        if telemetry is not None:
            telemetry.close(success)
        backend.shutdown()
        stop()
    last = result.checkpoints[-1] if result.checkpoints else None
    return RunSummary(
        steps=result.steps_run,
        rewards=tuple(result.rewards),
        step_seconds=tuple(result.step_seconds),
        seconds=time.perf_counter() - started,
        metrics_path=telemetry.metrics_path,
        plot_path=telemetry.curves_path,
        checkpoint=last.path if last else None,
        hf_export=last.hf_path if last else None,
        stopped=result.stopped,
    )


def _resume(
    config: TrainerConfig,
    prepared: Prepared,
    store: CheckpointStore | None,
    roles: Roles,
    backend: Backend,
    loop: RLLoop,
    telemetry: Telemetry,
) -> int:
    """Load the checkpoint this run starts from; returns its step (0: from the start)."""
    from .checkpoint import restore_driver_rng
    from .lifecycle import load_roles, resume_point

    resumed = resume_point(config, prepared.resume_path, store, load_roles(roles, backend))
    start_step = 0
    if resumed.state is not None and resumed.path is not None:
        prepared.dataset.load_state_dict(resumed.state["data"])
        start_step = int(resumed.state["step"])
        loop.sync_weights()  # the engines started from the base model
        restore_driver_rng(resumed.path)  # last: nothing may draw from it after this
        log.info("resumed from %s at step %d", resumed.url, start_step)
    if store is not None or resumed.skipped:
        telemetry.resumed(resumed.url, start_step, resumed.skipped)
    return start_step


def _role_scorer(backend: Backend, group: RoleGroup) -> Callable[[list[str]], list[float]]:
    """The RewardSet's scorer for a reward-model role: texts split over its replicas."""
    from .rollout_batch import even_ranges

    def score(texts: list[str]) -> list[float]:
        ranges = even_ranges(len(texts), group.size)
        parts = backend.get(group.call_each("score", [(texts[a:b],) for a, b in ranges]))
        return [value for part in parts for value in part]

    return score
