"""The tensors of one rollout as they travel between roles, and how they are cut into micro
batches and data-parallel shards."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import torch

from .generation.base import GenerationOutput

PER_TOKEN = ("old_logprobs", "ref_logprobs", "values", "advantages", "returns", "rollout_logprobs")


@dataclass
class RolloutBatch:
    """Sequences [B, P + R] (prompt left-padded to P, completion right-padded to R) and per-token
    tensors [B, R] over completion positions; rows in generation order (the samples of a prompt
    are contiguous)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_width: int
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    rollout_logprobs: torch.Tensor | None = None
    """Log-probabilities the rollout engine sampled each token with (vllm), for the mismatch correction."""

    @classmethod
    def from_generation(cls, output: GenerationOutput) -> RolloutBatch:
        return cls(
            output.input_ids, output.attention_mask, output.prompt_width, rollout_logprobs=output.logprobs
        )

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_width(self) -> int:
        return self.input_ids.shape[1] - self.prompt_width

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width :]

    @property
    def response_mask(self) -> torch.Tensor:
        return self.attention_mask[:, self.prompt_width :].bool()

    def with_tensors(self, **tensors: torch.Tensor | None) -> RolloutBatch:
        unknown = set(tensors) - set(PER_TOKEN)
        if unknown:
            raise ValueError(f"not per-token fields: {sorted(unknown)}")
        return replace(self, **tensors)

    def rows(self, start: int, stop: int) -> RolloutBatch:
        """Rows [start, stop), trimmed of columns that are padding in every kept row."""
        ids = self.input_ids[start:stop]
        mask = self.attention_mask[start:stop]
        real = mask.bool().any(dim=0)
        left = int(real[: self.prompt_width].long().argmax()) if real[: self.prompt_width].any() else 0
        response_real = real[self.prompt_width :]
        # Keep at least one completion column: every sample has one generated token.
        width = max(1, int(response_real.nonzero().max()) + 1) if response_real.any() else 1
        right = self.prompt_width + width
        per_token = {
            name: (None if value is None else value[start:stop, :width])
            for name in PER_TOKEN
            for value in [getattr(self, name)]
        }
        return RolloutBatch(ids[:, left:right], mask[:, left:right], self.prompt_width - left, **per_token)

    def micro_batches(self, size: int) -> Iterator[RolloutBatch]:
        for start in range(0, self.size, size):
            yield self.rows(start, min(start + size, self.size))

    def to(self, device: torch.device) -> RolloutBatch:
        moved = {
            f.name: (value.to(device) if isinstance(value, torch.Tensor) else value)
            for f in fields(self)
            for value in [getattr(self, f.name)]
        }
        return RolloutBatch(**moved)


def shard_rows(batch_size: int, train_batch_size: int, rank: int, world_size: int) -> torch.Tensor:
    """Row indices of data-parallel worker `rank`: its 1/world_size part of every train batch, so
    each optimizer step sees trainBatchSize samples over all workers."""
    if batch_size % train_batch_size or train_batch_size % world_size:
        raise ValueError(
            f"{world_size} workers cannot split {batch_size} samples into train batches of {train_batch_size}"
        )
    per_worker = train_batch_size // world_size
    starts = torch.arange(0, batch_size, train_batch_size) + rank * per_worker
    return (starts.unsqueeze(1) + torch.arange(per_worker)).reshape(-1)


def select_rows(batch: RolloutBatch, index: torch.Tensor) -> RolloutBatch:
    per_token = {
        name: (None if value is None else value[index])
        for name in PER_TOKEN
        for value in [getattr(batch, name)]
    }
    return RolloutBatch(batch.input_ids[index], batch.attention_mask[index], batch.prompt_width, **per_token)


def even_ranges(total: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous, nearly equal ranges covering [0, total), one per worker."""
    bounds = [round(i * total / parts) for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))
