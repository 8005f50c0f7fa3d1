"""Run one offline stage: preflight -> backend -> stage workers -> resume -> steps -> summary.

One step: the next trainBatchSize examples, split evenly over the workers -> one optimizer step
-> telemetry -> checkpoint when due -> evaluation on spec.data.eval every evalEverySteps and at
the end (`eval/<stage>/...`). `rlhf run` and `rlhf train` reach it through runner.run_trainer.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

from ..api.job import TrainerConfig
from ..api.spec import RLHFJobSpec
from ..api.stages import layout_view
from ..api.validation import FieldError
from ..engine.device import prepare_environment

log = logging.getLogger("rlhf_trainer")


@dataclass
class StagePrepared:
    spec: RLHFJobSpec
    dataset: Any
    eval_dataset: Any
    resume_path: str | None


def stage_preflight(spec: RLHFJobSpec, backend: str, resume_from: str | None) -> StagePrepared:
    """Model, tokenizer, data keys, batch sizes, devices and resume point; PreflightError with one
    line per problem, each naming its field."""
    from ..batch_plan import BatchConfigError
    from ..checkpoint import CheckpointError, resolve_resume
    from ..data import DataConfigError
    from ..engine.models import load_tokenizer
    from ..preflight import (
        PreflightError,
        _check_devices,
        _check_model_path,
        _lines_as_errors,
        absolute_paths,
    )
    from .data import ExampleDataset
    from .plan import stage_plan

    spec = absolute_paths(spec)
    errors: list[FieldError] = []
    actor = spec.models.actor
    model_ok = _check_model_path(actor.model, "spec.models.actor.model", errors)
    if spec.models.reference is not None:
        _check_model_path(spec.models.reference.model, "spec.models.reference.model", errors)
    tokenizer = None
    if model_ok or actor.tokenizer:
        try:
            tokenizer = load_tokenizer(actor.tokenizer or actor.model, actor.trust_remote_code)
        except Exception as exc:
            field = "spec.models.actor.tokenizer" if actor.tokenizer else "spec.models.actor.model"
            errors.append(FieldError(field, f"no usable tokenizer: {type(exc).__name__}: {exc}"))
    stage = spec.algorithm.name
    dataset = ExampleDataset(
        stage, spec.data.prompts, tokenizer, spec.training.seed, spec.data.shuffle, "spec.data.prompts"
    )
    eval_dataset = None
    if spec.training.eval_every_steps > 0 and spec.data.eval is None:
        errors.append(FieldError("spec.data.eval", "required when training.evalEverySteps > 0"))
    if spec.data.eval is not None:
        eval_dataset = ExampleDataset(
            stage, spec.data.eval, tokenizer, spec.training.seed, False, "spec.data.eval"
        )
    for ds in (dataset, eval_dataset):
        if ds is None or (ds.source.chat_template and tokenizer is None):
            continue
        try:
            ds.preflight()
        except DataConfigError as exc:
            errors.extend(_lines_as_errors(str(exc), ds.field))
    workers = max(1, actor.gpus)
    try:
        stage_plan(spec, workers)
    except BatchConfigError as exc:
        errors.extend(_lines_as_errors(str(exc), "spec.training"))
    _check_devices(layout_view(spec), backend, errors)
    resume_path = None
    try:
        resume_path = resolve_resume(spec.checkpoint, resume_from)
    except CheckpointError as exc:
        errors.extend(_lines_as_errors(str(exc), "spec.checkpoint.resume"))
    if errors:
        raise PreflightError(errors)
    return StagePrepared(spec, dataset, eval_dataset, resume_path)


def run_stage(config: TrainerConfig) -> int:
    """Exit code 0 when the stage finished, 1 (with the reasons on stderr or in the log) otherwise."""
    from ..preflight import PreflightError
    from ..runner import _configure_logging

    _configure_logging()
    prepare_environment(config.spec.models.actor.gpus > 0)
    try:
        prepared = stage_preflight(config.spec, config.backend, config.resume_from)
    except PreflightError as exc:
        for error in exc.errors:
            print(str(error), file=sys.stderr)
        return 1
    try:
        summary = train_stage(config, prepared)
    except Exception as exc:
        from ..failures import report_failure

        report_failure(exc, config.output_dir)
        return 1
    for line in summary.lines():
        print(line)
    return 0


def train_stage(config: TrainerConfig, prepared: StagePrepared) -> Any:
    from ..backends.placement import ACTOR
    from ..checkpoint import Checkpointer, load_checkpoint, restore_driver_rng
    from ..lifecycle import open_store, resume_point
    from ..role_groups import Roles, _contexts
    from ..runner import RunSummary, _start_backend
    from ..telemetry import Telemetry
    from .role import StageRole

    started = time.perf_counter()
    spec = prepared.spec
    backend, plan, num_threads, stop = _start_backend(config.backend, layout_view(spec))
    telemetry = None
    success = False
    try:
        placements = plan.roles[ACTOR]
        contexts = _contexts(backend, placements, num_threads, process_group=True)
        group = backend.start_role(ACTOR, StageRole, [(spec, ctx) for ctx in contexts], placements, contexts)
        backend.wait_ready([group])
        roles = Roles(actor=group)
        log.info(
            "%s stage ready after %.1fs: %d worker(s)",
            spec.algorithm.name,
            time.perf_counter() - started,
            group.size,
        )
        telemetry = Telemetry(config, spec.training.max_steps, spec.algorithm.name)
        store = open_store(config)
        checkpointer = None
        if spec.checkpoint is not None and store is not None:
            telemetry.run = store.run
            checkpointer = Checkpointer(spec.checkpoint, spec.training.max_steps, store)
        loop = StageLoop(
            spec, group, backend, prepared.dataset, prepared.eval_dataset, telemetry, checkpointer, roles
        )
        start_step = 0
        resumed = resume_point(
            config, prepared.resume_path, store, lambda path: load_checkpoint(path, roles, backend)
        )
        if resumed.state is not None and resumed.path is not None:
            prepared.dataset.load_state_dict(resumed.state["data"])
            start_step = int(resumed.state["step"])
            restore_driver_rng(resumed.path)
            log.info("resumed from %s at step %d", resumed.url, start_step)
        if store is not None or resumed.skipped:
            telemetry.resumed(resumed.url, start_step, resumed.skipped)
        saved = loop.run(start_step)
        success = True
    finally:
        if telemetry is not None:
            telemetry.close(success)
        backend.shutdown()
        stop()
    last = saved[-1] if saved else None
    return RunSummary(
        steps=loop.steps_run,
        rewards=(),
        step_seconds=tuple(loop.step_seconds),
        seconds=time.perf_counter() - started,
        metrics_path=telemetry.metrics_path,
        plot_path=telemetry.curves_path,
        checkpoint=last.path if last else None,
        hf_export=last.hf_path if last else None,
    )


class StageLoop:
    def __init__(
        self,
        spec: RLHFJobSpec,
        group: Any,
        backend: Any,
        dataset: Any,
        eval_dataset: Any,
        telemetry: Any,
        checkpointer: Any,
        roles: Any,
    ) -> None:
        self.spec, self.group, self.backend = spec, group, backend
        self.dataset, self.eval_dataset = dataset, eval_dataset
        self.telemetry, self.checkpointer, self.roles = telemetry, checkpointer, roles
        self.steps_run = 0
        self.step_seconds: list[float] = []

    def run(self, start_step: int) -> list[Any]:
        from ..rollout_batch import even_ranges

        saved = []
        training = self.spec.training
        for step in range(start_step + 1, training.max_steps + 1):
            started = time.perf_counter()
            examples = self.dataset.next_examples(training.train_batch_size)
            shards = [(examples[a:b],) for a, b in even_ranges(len(examples), self.group.size)]
            results = self.backend.get(self.group.call_each("train_step", shards))
            metrics = _mean(results)
            train_s = time.perf_counter() - started
            if self.checkpointer is not None and self.checkpointer.due(step):
                t = time.perf_counter()
                ckpt = self.checkpointer.save(
                    step, self.roles, self.backend, {"data": self.dataset.state_dict()}
                )
                metrics["timing/checkpoint_s"] = time.perf_counter() - t
                saved.append(ckpt)
                self.telemetry.checkpoint_saved(ckpt.step, ckpt.path, ckpt.hf_path)
            every = training.eval_every_steps
            # After step 1 too: the first point of the held-out curve.
            if self.eval_dataset is not None and (
                step == 1 or (every and step % every == 0) or step == training.max_steps
            ):
                metrics.update(self.evaluate())
            elapsed = time.perf_counter() - started
            metrics["timing/train_s"] = train_s
            metrics["timing/step_s"] = elapsed
            metrics["perf/samples_per_s"] = len(examples) / elapsed
            self.telemetry.log_step(step, metrics)
            self.steps_run += 1
            self.step_seconds.append(elapsed)
        return saved

    def evaluate(self) -> dict[str, float]:
        from ..rollout_batch import even_ranges

        examples = self.eval_dataset.all_examples()
        shards = [(examples[a:b],) for a, b in even_ranges(len(examples), self.group.size)]
        return {
            f"eval/{key}": value
            for key, value in _mean(self.backend.get(self.group.call_each("evaluate", shards))).items()
        }


def _mean(results: list[dict[str, float]]) -> dict[str, float]:
    keys = {key for result in results for key in result}
    return {
        key: sum(r[key] for r in results if key in r) / sum(key in r for r in results) for key in sorted(keys)
    }
