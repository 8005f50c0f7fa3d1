"""Batch accounting of an offline stage: one step = one optimizer step over trainBatchSize examples."""

from __future__ import annotations

from ..api.spec import RLHFJobSpec
from ..batch_plan import BatchConfigError, BatchPlan


def stage_plan(spec: RLHFJobSpec, data_parallel: int = 1) -> BatchPlan:
    """trainBatchSize examples per step, split over the workers in micro batches of microBatchSize;
    BatchConfigError naming the field when they do not divide."""
    training = spec.training
    per_pass = training.micro_batch_size * data_parallel
    if training.train_batch_size % per_pass:
        raise BatchConfigError(
            f"spec.training.microBatchSize: microBatchSize x data-parallel workers = "
            f"{training.micro_batch_size} x {data_parallel} = {per_pass} must divide "
            f"trainBatchSize {training.train_batch_size}"
        )
    return BatchPlan(
        samples_per_step=training.train_batch_size,
        train_batch_size=training.train_batch_size,
        micro_batch_size=training.micro_batch_size,
        data_parallel=data_parallel,
        epochs=1,
        optimizer_steps_per_epoch=1,
        gradient_accumulation=training.train_batch_size // per_pass,
        max_steps=training.max_steps,
    )
