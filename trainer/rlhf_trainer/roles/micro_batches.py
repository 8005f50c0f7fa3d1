"""The actor's micro batches: microBatchSize samples each (DeepSpeed accumulates a fixed number of
them), or, with spec.training.microBatchTokens, as many samples as fit the token budget, each
weighted by its share of the train batch so the optimizer step sees the same loss."""

from __future__ import annotations

from collections.abc import Iterator

from ..batch_plan import BatchPlan, MicroShare, token_budget_ranges
from ..rollout_batch import RolloutBatch


def train_micro_batches(
    batch: RolloutBatch, plan: BatchPlan, token_budget: int, loss_aggregation: str
) -> Iterator[tuple[RolloutBatch, MicroShare | None]]:
    """(micro batch, None) with a sample count (DeepSpeed's fixed accumulation); (micro batch,
    share) with a token budget, per train batch of this worker's rows."""
    if not token_budget:
        for micro in batch.micro_batches(plan.micro_batch_size):
            yield micro, None
        return
    rows_per_step = plan.train_batch_size // plan.data_parallel
    tokens = batch.attention_mask.sum(dim=1).tolist()
    response = batch.response_mask.sum(dim=1).tolist()
    for first in range(0, batch.size, rows_per_step):
        last = min(first + rows_per_step, batch.size)
        ranges = token_budget_ranges(tokens[first:last], token_budget)
        total = sum(response[first:last]) if loss_aggregation == "token-mean" else last - first
        for i, (a, b) in enumerate(ranges):
            part = sum(response[first + a : first + b]) if loss_aggregation == "token-mean" else b - a
            yield (
                batch.rows(first + a, first + b),
                MicroShare(weight=part / max(total, 1), boundary=i == len(ranges) - 1),
            )
