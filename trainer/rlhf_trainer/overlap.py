"""Stage overlap: the next rollouts are generated while the actor trains on the current one.

With spec.training.maxStaleness = s > 0, up to s rollouts beyond the one being trained on are in
flight: step t takes its rollout, submits the generation of step t + s (prompts drawn in the same
order as the synchronous loop), then learns (rewards, scores, advantages, update) while the
engines generate; the weight sync is queued behind the generations already submitted, so each
rollout is sampled by the weights current when it was submitted. A rollout submitted after k
updates and trained on after j >= k updates is j - k versions stale (at most s): `rollout/staleness`,
and `rollout/policy_version` = k (every sample of a rollout shares its version: the engines take
new weights only between rollouts). The actor's rollout-time forward is the proximal policy; the
truncated importance weights of algorithm.rolloutCorrection reweight each stale token by the
trainer's over the sampler's probability (hf engines record it while sampling, vllm reports it).

On Ray the engines are other processes: generation, weight sync and training are calls queued on
their actors, and nothing waits for a weight sync. In-process the rollout engine runs on one
background thread (calls in submission order; torch releases the GIL in its kernels).

With spec.generation.streaming (Ray) each rollout is submitted as streams of finished samples
(streaming.py): when its step comes, the samples already in are scored at once and the rest as
they finish, while the engines still generate.

The overlap needs engines of their own (models.rollout.engines >= 1): an actor that generates
itself, or vllm engines colocated on its GPUs, run the synchronous loop (staleness 0).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .data import Prompt
from .generation import GenerationOutput, merge_outputs
from .streaming import StreamedRollout, start_streams

if TYPE_CHECKING:
    from .loop import LoopResult, RLLoop

log = logging.getLogger(__name__)


@dataclass
class _InFlight:
    step: int
    prompts: list[Prompt]
    pending: Any
    """Ray: the engines' result refs; in-process: a Future of the outputs."""
    version: int
    """Updates applied to the engines' weights when this rollout was submitted."""


class RolloutPipeline:
    def __init__(self, loop: RLLoop, start_step: int, depth: int) -> None:
        self.loop = loop
        self.depth = depth
        self.last_step = loop.spec.training.max_steps
        self.next_step = start_step + 1
        self.updates = 0
        self.inflight: deque[_InFlight] = deque()
        self.data_states: dict[int, dict[str, Any]] = {}
        self.learned_data_state: tuple[int, dict[str, Any] | None] = (start_step, None)
        self.pending_syncs: list[Any] = []
        self.executor = None if loop.backend.remote else ThreadPoolExecutor(1, thread_name_prefix="rollout")

    @classmethod
    def for_loop(cls, loop: RLLoop, start_step: int) -> RolloutPipeline | None:
        """The pipeline of `loop`, or None where its steps run synchronously."""
        depth = loop.spec.training.max_staleness
        if depth == 0:
            return None
        if loop.roles.rollout is None:
            log.info("maxStaleness %d: the actor generates itself, so steps run synchronously", depth)
            return None
        if loop.engine_sync is not None and loop.spec.models.colocate.all:
            log.info(
                "maxStaleness %d: colocated vllm engines share the actor's GPUs, steps run synchronously",
                depth,
            )
            return None
        return cls(loop, start_step, depth)

    # ---------------------------------------------------------------- one step

    def step(self, step: int, result: LoopResult) -> dict[str, float]:
        from .loop import PhaseTimer

        started = time.perf_counter()
        timer = PhaseTimer()
        with timer("generate"):
            self._fill(step)
            current = self.inflight.popleft()
            assert current.step == step, (current.step, step)
            output, streamed = self._wait(current)
            self._fill(step + 1)  # the next rollout(s) generate while this one is learned from
        data_state = self.data_states.pop(step + 1, None)
        self.learned_data_state = (step, data_state)
        metrics = self.loop.learn(
            step,
            result,
            current.prompts,
            output,
            timer,
            started,
            sync=self._sync,
            data_state=data_state,
            before_eval=self._drain,
            streamed=streamed,
        )
        metrics["rollout/staleness"] = float(self.updates - 1 - current.version)
        metrics["rollout/policy_version"] = float(current.version)
        return metrics

    def data_state_after(self, step: int) -> dict[str, Any] | None:
        """The dataset's position after step `step` (the one just learned from), before the
        prompts of the rollouts in flight were drawn; None when none were drawn beyond it."""
        learned, state = self.learned_data_state
        assert learned == step, (learned, step)
        return state

    def _fill(self, up_to: int) -> None:
        """Submit generations until `depth` rollouts beyond step `up_to - 1` are in flight."""
        limit = min(self.last_step, up_to + self.depth - 1)
        while self.next_step <= limit:
            self.data_states[self.next_step] = self.loop.dataset.state_dict()
            prompts = self.loop.dataset.next_batch(self.loop.spec.training.rollout_batch_size)
            pending = self._submit(prompts)
            self.inflight.append(_InFlight(self.next_step, prompts, pending, self.updates))
            self.next_step += 1

    # ---------------------------------------------------------------- engines

    def _submit(self, prompts: list[Prompt]) -> Any:
        loop = self.loop
        if loop.streaming:
            return start_streams(loop, prompts)
        group = loop.roles.generator
        chunks = [(rows,) for _, rows in loop.engine_chunks(prompts)]
        if self.executor is None:
            return group.call_each("generate", chunks)
        workers = group.workers
        return self.executor.submit(
            lambda: [w.generate(*args) for w, args in zip(workers, chunks, strict=True)]
        )

    def _wait(self, inflight: _InFlight) -> tuple[GenerationOutput, StreamedRollout | None]:
        streamed = None
        if self.loop.streaming:
            streamed = StreamedRollout(self.loop, inflight.prompts, inflight.pending)
            output = streamed.consume()
        elif self.executor is None:
            outputs = self.loop.backend.get(inflight.pending)
        else:
            outputs = inflight.pending.result()
        if self.executor is None:
            syncs, self.pending_syncs = self.pending_syncs, []
            if syncs:  # already done (queued before this generation); surfaces their errors
                self.loop.weight_sync_bytes = self.loop.backend.get(syncs)[0]
        if streamed is None:
            output = merge_outputs(outputs, self.loop.tokenizer.pad_token_id)
        return output, streamed

    def _sync(self) -> None:
        """Queue the updated weights behind the generations in flight (nothing waits for it)."""
        loop = self.loop
        self.updates += 1
        if loop.engine_sync is not None:  # vllm: a collective between the actor and the engines
            loop.sync_weights()
            return
        if self.executor is None:
            self.pending_syncs.extend(loop.push_state_dict())
            return
        [actor] = loop.roles.actor.workers
        # A copy: the actor keeps training while the update waits for the generation ahead of it.
        state = {k: v.detach().clone() for k, v in actor.weights(False).items()}
        rollout = loop.roles.rollout
        assert rollout is not None
        self.executor.submit(lambda: [w.update_weights(state) for w in rollout.workers])
        loop.weight_sync_bytes = sum(t.numel() * t.element_size() for t in state.values())

    def _drain(self) -> None:
        """Let what is queued on the in-process engine finish (evaluation generates with it)."""
        if self.executor is not None:
            self.executor.submit(lambda: None).result()
        elif self.pending_syncs:
            self.loop.backend.get(self.pending_syncs)
            self.pending_syncs = []

    def close(self) -> None:
        """Wait for what is still in flight (a failed run's generations), then stop the thread."""
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        self.inflight.clear()
