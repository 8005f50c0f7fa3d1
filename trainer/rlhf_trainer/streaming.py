"""Sample-level streaming: rewards and reference log-probs start on the samples that have finished
while longer ones are still generating (spec.generation.streaming); so do the critic's values and
the actor's old log-probabilities where their workers compute independently.

The rollout engines hand over their samples as they finish (RolloutRole.generate_stream, a Ray
streaming generator per engine: a vllm engine after every engine step that finishes requests, an
hf engine when its static batch ends). The driver waits on the engines' streams and on the
scoring calls at once, and as soon as
- every sample of a prompt group is in, it scores the group's rewards (functions and remote
  servers, here in the driver, while the engines keep generating);
- every row of a micro batch is in, it submits that micro batch to the worker that would have
  computed it anyway, for the reference log-probs, the critic's values and the actor's old
  log-probs: rows are split over a role's workers and cut into micro batches exactly as the
  unstreamed call cuts them, so every forward pass sees the same tensors and the results are
  bit-identical to the unstreamed path. (The actor and critic have finished the previous update
  by then: calls run in order on each worker.)

Advantages need whole groups and batch statistics: they start once the rollout is complete. So
do a ZeRO-3 actor's or critic's passes over several ranks (every forward pass gathers partitions,
all ranks together, so they cannot take one micro batch each) and reward models (their batches
pad to the longest text in each, so another batching would change scores in the last bits). The
experience batch is the rows in generation order, whatever order they finished in.

Only on the Ray backend with rollout engines of their own (in-process there is one thread to run
everything on; colocated vllm engines hold the GPU the reference would run on).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .api.spec import RoleSpec
from .backends.base import RoleGroup
from .generation import GenerationOutput, gather_rows
from .rewards.reward_set import RewardResult
from .rollout_batch import RolloutBatch, even_ranges

if TYPE_CHECKING:
    from .data import Prompt
    from .loop import RLLoop


@dataclass
class ScoreUnit:
    """One micro batch of a scoring call: rows [start, stop) on worker `worker` of `group`."""

    name: str
    """The per-token tensor it computes: ref_logprobs, values or old_logprobs."""
    group: RoleGroup
    method: str
    worker: int
    start: int
    stop: int
    pending: Any = None
    early: bool = False
    """Its result was back before the last sample of the rollout was."""


def score_units(
    name: str, group: RoleGroup, method: str, total: int, micro_batch_size: int
) -> list[ScoreUnit]:
    """The micro batches the unstreamed call makes (loop._map_rows splits the rows evenly over the
    workers, each cuts its part into micro batches from its first row)."""
    return [
        ScoreUnit(name, group, method, worker, start, min(start + micro_batch_size, stop))
        for worker, (first, stop) in enumerate(even_ranges(total, group.size))
        for start in range(first, stop, micro_batch_size)
    ]


def streamed_scores(loop: RLLoop, total: int) -> list[ScoreUnit]:
    """The micro batches of every scoring call that can take one micro batch at a time."""
    spec, roles = loop.spec, loop.roles
    units = []
    if roles.reference is not None:  # frozen, no DeepSpeed: its workers are independent
        units += score_units(
            "ref_logprobs", roles.reference, "logprobs", total, spec.training.micro_batch_size
        )
    critic = spec.models.critic
    if roles.critic is not None and critic is not None and _independent(roles.critic, critic):
        units += score_units("values", roles.critic, "values", total, loop.plan.micro_batch_size)
    if loop.needs_old_logprobs and _independent(roles.actor, spec.models.actor):
        units += score_units("old_logprobs", roles.actor, "logprobs", total, loop.plan.micro_batch_size)
    return units


def _independent(group: RoleGroup, role: RoleSpec) -> bool:
    """Whether each worker makes its forward passes on its own (not ZeRO-3 over several ranks)."""
    return group.size == 1 or role.zero_stage != 3


def start_streams(loop: RLLoop, prompts: list[Prompt]) -> list[tuple[int, Any]]:
    """Start generating `prompts` on every engine, streamed: (first row, ObjectRefGenerator)."""
    group = loop.roles.generator
    return [
        (first, worker.generate_stream.options(num_returns="streaming").remote(rows))
        for worker, (first, rows) in zip(group.workers, loop.engine_chunks(prompts), strict=True)
    ]


def streams_rewards(loop: RLLoop) -> bool:
    """Whether rewards are scored per finished group: every source scores each sample on its own
    (functions, remote servers); a reward model scores after the rollout."""
    from .rewards.reward_set import ModelReward

    return not any(isinstance(s.source, ModelReward) for s in loop.rewards.sources)


class StreamedRollout:
    """One rollout's samples arriving from the engines, and the scoring started on them."""

    def __init__(self, loop: RLLoop, prompts: list[Prompt], streams: list[tuple[int, Any]]) -> None:
        self.loop = loop
        self.streams = streams
        n = loop.spec.algorithm.samples_per_prompt
        self.n = n
        self.total = len(prompts) * n
        self.texts = [p.text for p in prompts for _ in range(n)]
        self.labels = [p.label for p in prompts for _ in range(n)]
        self.pad_id = loop.tokenizer.pad_token_id
        self.pieces: list[tuple[list[int], GenerationOutput]] = []
        self.arrived = torch.zeros(self.total, dtype=torch.bool)
        self.score_rewards = streams_rewards(loop)
        self.scored_groups = torch.zeros(len(prompts), dtype=torch.bool)
        self.reward_parts: list[tuple[list[int], RewardResult]] = []
        self.units = streamed_scores(loop, self.total)
        self.started = time.perf_counter()
        self.generated_at: float | None = None
        self.first_scoring_at: float | None = None
        self.reward_early_s = 0.0

    # ---------------------------------------------------------------- while generating

    def consume(self) -> GenerationOutput:
        """Take the engines' samples until the last one is in, scoring what is complete on the way;
        returns the rollout, rows in generation order."""
        import ray

        streams = {id(gen): (first, gen) for first, gen in self.streams}
        waiting: dict[Any, ScoreUnit] = {}
        while streams:
            waitables = [gen for _, gen in streams.values()] + list(waiting)
            [ready], _ = ray.wait(waitables, num_returns=1)
            if isinstance(ready, ray.ObjectRefGenerator):
                first = streams[id(ready)][0]
                try:
                    rows, piece = ray.get(next(ready))
                except StopIteration:
                    del streams[id(ready)]
                    continue
                self._arrive([first + r for r in rows], piece)
                for unit in self._submit_scores():
                    waiting[unit.pending] = unit
            else:
                unit = waiting.pop(ready)
                unit.early = self.generated_at is None
        if self.generated_at is None or not bool(self.arrived.all()):
            missing = (~self.arrived).nonzero().flatten().tolist()
            raise RuntimeError(f"the rollout engines ended without rows {missing[:8]}")
        return gather_rows(self.pieces, range(self.total), self.pad_id)

    def _arrive(self, rows: list[int], piece: GenerationOutput) -> None:
        self.pieces.append((rows, piece))
        self.arrived[rows] = True
        if bool(self.arrived.all()):
            self.generated_at = time.perf_counter()
            return  # the last groups are scored by rewards(), timed as the reward phase
        if self.score_rewards:
            started = time.perf_counter()
            if self._score_complete_groups():
                self.first_scoring_at = self.first_scoring_at or started
                self.reward_early_s += time.perf_counter() - started

    def _score_complete_groups(self) -> bool:
        complete = self.arrived.view(-1, self.n).all(dim=1) & ~self.scored_groups
        groups = complete.nonzero().flatten().tolist()
        if not groups:
            return False
        self.scored_groups[groups] = True
        rows = [g * self.n + k for g in groups for k in range(self.n)]
        batch = RolloutBatch.from_generation(gather_rows(self.pieces, rows, self.pad_id))
        scored = self.loop.rewards.score(
            [self.texts[r] for r in rows], self.loop._decode(batch), [self.labels[r] for r in rows]
        )
        self.reward_parts.append((rows, scored))
        return True

    def _submit_scores(self) -> list[ScoreUnit]:
        submitted = []
        for unit in self.units:
            if unit.pending is None and bool(self.arrived[unit.start : unit.stop].all()):
                rows = range(unit.start, unit.stop)
                batch = RolloutBatch.from_generation(gather_rows(self.pieces, rows, self.pad_id))
                batch = batch.rows(0, batch.size)  # only the columns its rows use
                worker = unit.group.workers[unit.worker]
                unit.pending = self.loop.backend.submit(worker, unit.method, (batch,), {})
                if self.generated_at is None:
                    self.first_scoring_at = self.first_scoring_at or time.perf_counter()
                submitted.append(unit)
        return submitted

    # ---------------------------------------------------------------- after the rollout

    def rewards(self) -> RewardResult:
        """Every sample's rewards in row order: the groups scored while generating and the rest now."""
        if not self.score_rewards:
            return self.loop.rewards.score(self.texts, self.loop._decode(self._batch()), self.labels)
        self._score_complete_groups()
        total = [0.0] * self.total
        per_source: dict[str, list[float]] = {name: [0.0] * self.total for name in self.loop.rewards.names}
        for rows, scored in self.reward_parts:
            for k, row in enumerate(rows):
                total[row] = scored.total[k]
                for name, values in scored.per_source.items():
                    per_source[name][row] = values[k]
        return RewardResult(total=total, per_source=per_source)

    def streamed(self, name: str) -> bool:
        """Whether the tensor `name` (ref_logprobs, values, old_logprobs) is computed streamed."""
        return any(unit.name == name for unit in self.units)

    def scores(self, name: str, batch: RolloutBatch) -> torch.Tensor:
        """[B, R] `name` over the whole rollout (waits for the micro batches still running), each
        micro batch's columns placed as the unstreamed call places them."""
        units = [unit for unit in self.units if unit.name == name]
        out = torch.zeros(batch.size, batch.response_width, dtype=torch.float32)
        results = self.loop.backend.get([unit.pending for unit in units])
        for unit, piece in zip(units, results, strict=True):
            out[unit.start : unit.stop, : piece.shape[1]] = piece
        return out

    def _batch(self) -> RolloutBatch:
        return RolloutBatch.from_generation(gather_rows(self.pieces, range(self.total), self.pad_id))

    def metrics(self) -> dict[str, float]:
        """`stream/reward_hidden_s`: reward scoring done while the engines were still generating;
        `stream/scores_early_frac`: the share of streamed micro batches (reference, values, old
        log-probs) back before the last sample was; `stream/lead_s`: how long before the last
        sample the first scoring started."""
        assert self.generated_at is not None
        metrics = {
            "stream/reward_hidden_s": self.reward_early_s,
            "stream/lead_s": 0.0
            if self.first_scoring_at is None
            else self.generated_at - self.first_scoring_at,
        }
        if self.units:
            metrics["stream/scores_early_frac"] = sum(u.early for u in self.units) / len(self.units)
        return metrics
