"""Batch accounting: how one rollout turns into optimizer steps.

`rolloutBatchSize` counts prompts; `trainBatchSize` and `microBatchSize` count samples. One RL step
generates rolloutBatchSize x samplesPerPrompt samples and makes
(samples / trainBatchSize) x epochs optimizer steps, each accumulating gradients over
trainBatchSize / (microBatchSize x data-parallel workers) micro batches per worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from .api.spec import RLHFJobSpec


class BatchConfigError(ValueError):
    """Batch sizes that do not divide; the message names the field."""


@dataclass(frozen=True)
class BatchPlan:
    samples_per_step: int
    """Samples (completions) generated per RL step."""
    train_batch_size: int
    """Samples per optimizer step, over all data-parallel workers."""
    micro_batch_size: int
    """Samples per forward/backward pass on one worker."""
    data_parallel: int
    """Training workers of the role the plan is for."""
    epochs: int
    optimizer_steps_per_epoch: int
    gradient_accumulation: int
    """Micro batches per optimizer step on one worker."""
    max_steps: int

    @property
    def optimizer_steps_per_step(self) -> int:
        return self.optimizer_steps_per_epoch * self.epochs

    @property
    def total_optimizer_steps(self) -> int:
        return self.optimizer_steps_per_step * self.max_steps

    @property
    def micro_batches_per_step(self) -> int:
        """Forward/backward passes one worker makes per RL step."""
        return self.optimizer_steps_per_step * self.gradient_accumulation

    @property
    def single_update(self) -> bool:
        """One optimizer step per rollout: the policy is unchanged until the step, so the
        rollout-time log-probabilities equal the first forward's and need no separate pass."""
        return self.optimizer_steps_per_step == 1


def plan_batches(spec: RLHFJobSpec, data_parallel: int = 1) -> BatchPlan:
    """The plan for a training role with `data_parallel` workers; BatchConfigError naming the
    field when the sizes do not divide."""
    training = spec.training
    samples = training.rollout_batch_size * spec.algorithm.samples_per_prompt
    if samples % training.train_batch_size:
        raise BatchConfigError(
            f"spec.training.trainBatchSize: {training.train_batch_size} must divide rolloutBatchSize x "
            f"samplesPerPrompt = {training.rollout_batch_size} x {spec.algorithm.samples_per_prompt} = {samples}"
        )
    per_pass = training.micro_batch_size * data_parallel
    if training.train_batch_size % per_pass:
        raise BatchConfigError(
            f"spec.training.microBatchSize: microBatchSize x data-parallel workers = "
            f"{training.micro_batch_size} x {data_parallel} = {per_pass} must divide "
            f"trainBatchSize {training.train_batch_size}"
        )
    return BatchPlan(
        samples_per_step=samples,
        train_batch_size=training.train_batch_size,
        micro_batch_size=training.micro_batch_size,
        data_parallel=data_parallel,
        epochs=spec.algorithm.epochs,
        optimizer_steps_per_epoch=samples // training.train_batch_size,
        gradient_accumulation=training.train_batch_size // per_pass,
        max_steps=training.max_steps,
    )


@dataclass(frozen=True)
class MicroShare:
    """How one token-budget micro batch enters its optimizer step."""

    weight: float
    """Its share of the train batch's loss: response tokens (token-mean) or samples otherwise."""
    boundary: bool
    """True for the last micro batch of a train batch (the optimizer steps after it)."""


def token_budget_ranges(lengths: list[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive row ranges whose token counts sum to at most `budget` (a longer row goes alone)."""
    ranges: list[tuple[int, int]] = []
    start, used = 0, 0
    for i, length in enumerate(lengths):
        if i > start and used + length > budget:
            ranges.append((start, i))
            start, used = i, 0
        used += length
    if start < len(lengths):
        ranges.append((start, len(lengths)))
    return ranges


def check_token_budget(spec: RLHFJobSpec, data_parallel: int) -> None:
    """Token-budget micro batches differ in number per worker: one training worker only."""
    if spec.training.micro_batch_tokens and data_parallel > 1:
        raise BatchConfigError(
            f"spec.training.microBatchTokens: token-budget micro batches need one actor worker, the actor "
            f"has {data_parallel} (set microBatchTokens: 0 to use microBatchSize)"
        )
