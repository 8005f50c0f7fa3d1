"""The RL loop, one for every estimator.

One step: generate n samples per prompt -> rewards -> reference log-probs, old log-probs, values
-> advantages (the estimator named by spec.algorithm.name) -> PPO epochs over micro batches
(actor, and critic for ppo) -> weight sync to the rollout engines -> telemetry -> checkpoint.
Each phase is timed as `timing/<phase>_s`. With spec.training.maxStaleness > 0 the next rollouts
are generated while the actor trains (overlap.RolloutPipeline); 0 runs the phases one after another.
With spec.generation.streaming (Ray, rollout engines of their own) rewards and reference log-probs
start on the samples that have finished while the rest generate (streaming.StreamedRollout).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .algorithms import AdvantageConfig, estimator_for_algorithm, kl_penalty, masked_mean
from .api.spec import AlgorithmSpec, RLHFJobSpec
from .backends.base import Backend, RoleGroup
from .batch_plan import plan_batches
from .checkpoint import Checkpointer, SavedCheckpoint
from .data import Prompt, PromptDataset
from .generation import GenerationOutput, merge_outputs
from .rewards import RewardSet
from .role_groups import Roles
from .rollout_batch import RolloutBatch, even_ranges, select_rows, shard_rows
from .telemetry.keys import TIMING_PHASES

if TYPE_CHECKING:
    from .streaming import StreamedRollout

log = logging.getLogger(__name__)


def advantage_config(algorithm: AlgorithmSpec) -> AdvantageConfig:
    reward_range = algorithm.reward_range
    return AdvantageConfig(
        gamma=algorithm.gamma,
        lam=algorithm.lam,
        kl_coef=algorithm.kl.coef,
        kl_in_reward=not algorithm.kl.as_loss,
        reward_range=reward_range.mode if reward_range is not None else "batch",
        reward_low=reward_range.low if reward_range is not None else None,
        reward_high=reward_range.high if reward_range is not None else None,
    )


class PhaseTimer:
    def __init__(self) -> None:
        self.seconds = dict.fromkeys(TIMING_PHASES, 0.0)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


@dataclass
class LoopResult:
    steps_run: int
    rewards: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    checkpoints: list[SavedCheckpoint] = field(default_factory=list)
    stopped: bool = False  # stopped early on request (SIGTERM), after committing a checkpoint


class RLLoop:
    def __init__(
        self,
        spec: RLHFJobSpec,
        roles: Roles,
        backend: Backend,
        rewards: RewardSet,
        dataset: PromptDataset,
        tokenizer: Any,
        telemetry: Any,
        checkpointer: Checkpointer | None,
        eval_dataset: PromptDataset | None = None,
    ) -> None:
        self.spec = spec
        self.roles = roles
        self.backend = backend
        self.rewards = rewards
        self.dataset = dataset
        self.eval_dataset = eval_dataset
        self.tokenizer = tokenizer
        self.telemetry = telemetry
        self.checkpointer = checkpointer
        self.plan = plan_batches(spec, roles.actor.size)
        self.estimator = estimator_for_algorithm(spec.algorithm.name)
        self.advantage_config = advantage_config(spec.algorithm)
        kl = spec.algorithm.kl
        self.kl_in_reward = kl.coef > 0 and not kl.as_loss
        # Separate old log-probs only when the policy moves before the last micro batch is
        # trained on, or when the KL folded into the reward needs them before advantages.
        self.needs_old_logprobs = not self.plan.single_update or self.kl_in_reward
        self.add_special_tokens = not spec.data.prompts.chat_template
        # vllm engines take new weights over a process group of their own, opened once here.
        self.engine_sync = None
        if roles.rollout is not None and spec.models.rollout.engine == "vllm":
            from .weight_sync import EngineWeightSync

            self.engine_sync = EngineWeightSync(spec, roles, backend)
            self.engine_sync.open()
        self.weight_sync_bytes = 0
        self.streaming = (
            spec.generation.streaming
            and backend.remote
            and roles.rollout is not None
            and not (self.engine_sync is not None and spec.models.colocate.all)
        )
        # Read between steps: SIGTERM (lifecycle.StopRequest) ends the run after a checkpoint.
        self.stop_requested: Callable[[], bool] = lambda: False

    # ---------------------------------------------------------------- run

    def run(self, start_step: int) -> LoopResult:
        from .overlap import RolloutPipeline

        result = LoopResult(steps_run=0)
        pipeline = RolloutPipeline.for_loop(self, start_step)
        try:
            for step in range(start_step + 1, self.spec.training.max_steps + 1):
                metrics = self.step(step, result) if pipeline is None else pipeline.step(step, result)
                self.telemetry.log_step(step, metrics)
                result.steps_run += 1
                result.rewards.append(metrics["reward/mean"])
                result.step_seconds.append(metrics["timing/step_s"])
                if self.stop_requested() and step < self.spec.training.max_steps:
                    if self.checkpointer is not None and not (
                        result.checkpoints and result.checkpoints[-1].step == step
                    ):
                        data_state = None if pipeline is None else pipeline.data_state_after(step)
                        self._save_checkpoint(step, result, data_state)
                    result.stopped = True
                    break
        finally:
            if pipeline is not None:
                pipeline.close()
        return result

    def step(self, step: int, result: LoopResult) -> dict[str, float]:
        """One synchronous step: generate with the current policy, then learn from it."""
        started = time.perf_counter()
        timer = PhaseTimer()
        prompts = self.dataset.next_batch(self.spec.training.rollout_batch_size)
        streamed = None
        with timer("generate"):
            if self.streaming:
                from .streaming import StreamedRollout, start_streams

                streamed = StreamedRollout(self, prompts, start_streams(self, prompts))
                output = streamed.consume()
            else:
                output = self._generate(prompts, self.spec.algorithm.samples_per_prompt)
            if self.engine_sync is not None:
                self.engine_sync.sleep_engines()  # colocated on GPU: free it for the other roles
        return self.learn(step, result, prompts, output, timer, started, streamed=streamed)

    def learn(
        self,
        step: int,
        result: LoopResult,
        prompts: list[Prompt],
        output: GenerationOutput,
        timer: PhaseTimer,
        started: float,
        sync: Callable[[], None] | None = None,
        data_state: dict[str, Any] | None = None,
        before_eval: Callable[[], None] | None = None,
        streamed: StreamedRollout | None = None,
    ) -> dict[str, float]:
        """Everything after generation: rewards, scores, advantages, updates, weight sync (`sync`,
        default sync_weights), checkpoint (with `data_state`, default the dataset's) and eval.
        `streamed`: the rollout's samples came streamed and some of their scoring already ran."""
        n = self.spec.algorithm.samples_per_prompt
        batch = RolloutBatch.from_generation(output)
        with timer("reward"):
            if streamed is not None:
                scored = streamed.rewards()
            else:
                texts = [p.text for p in prompts for _ in range(n)]
                labels = [p.label for p in prompts for _ in range(n)]
                scored = self.rewards.score(texts, self._decode(batch), labels)
        rewards = torch.tensor(scored.total, dtype=torch.float32)
        metrics: dict[str, float] = {} if streamed is None else streamed.metrics()

        tensors = self._scores(batch, timer, streamed)
        mask = batch.response_mask
        with timer("advantage"):
            kl = None
            if self.kl_in_reward:
                kl = kl_penalty(
                    tensors["old_logprobs"], tensors["ref_logprobs"], self.spec.algorithm.kl.estimator, mask
                )
                metrics["kl/mean"] = float(masked_mean(kl, mask))
            advantages = self.estimator(
                rewards,
                mask,
                samples_per_prompt=n,
                config=self.advantage_config,
                kl=kl,
                values=tensors.get("values"),
            )
            batch = batch.with_tensors(
                **tensors, advantages=advantages.advantages, returns=advantages.returns
            )
        metrics.update({key: float(value) for key, value in advantages.metrics.items()})
        metrics.update(self._train(batch, timer))
        with timer("weight_sync"):
            (sync or self.sync_weights)()
        if self.roles.rollout is not None:
            metrics["perf/weight_sync_bytes"] = float(self.weight_sync_bytes)

        metrics.update(self._reward_metrics(rewards, scored.per_source, mask))
        if self.checkpointer is not None and self.checkpointer.due(step):
            with timer("checkpoint"):
                self._save_checkpoint(step, result, data_state)
        if self.eval_dataset is not None and step % self.spec.training.eval_every_steps == 0:
            if before_eval is not None:
                before_eval()
            metrics.update(self.evaluate())
        elapsed = time.perf_counter() - started
        metrics.setdefault("kl/mean", 0.0)
        metrics.update({f"timing/{phase}_s": seconds for phase, seconds in timer.seconds.items()})
        metrics["timing/step_s"] = elapsed
        metrics["perf/tokens_per_s"] = float(batch.attention_mask.sum()) / elapsed
        metrics["perf/samples_per_s"] = batch.size / elapsed
        return metrics

    def _save_checkpoint(
        self, step: int, result: LoopResult, data_state: dict[str, Any] | None = None
    ) -> None:
        """Save step `step`; `data_state` is the dataset's position after it (default: the
        dataset's now; the overlapped loop has already drawn the prompts of later steps)."""
        assert self.checkpointer is not None
        saved = self.checkpointer.save(
            step, self.roles, self.backend, {"data": data_state or self.dataset.state_dict()}
        )
        result.checkpoints.append(saved)
        self.telemetry.checkpoint_saved(saved.step, saved.path, saved.hf_path)

    # ---------------------------------------------------------------- phases

    def _generate(self, prompts: list[Prompt], n: int) -> GenerationOutput:
        group = self.roles.generator
        chunks = [(rows,) for _, rows in self.engine_chunks(prompts, n)]
        outputs = self.backend.get(group.call_each("generate", chunks))
        return merge_outputs(outputs, self.tokenizer.pad_token_id)

    def engine_chunks(self, prompts: list[Prompt], n: int | None = None) -> list[tuple[int, list[list[int]]]]:
        """Each generating worker's (first row, prompt token ids): every prompt `n` times (default
        samplesPerPrompt), the rows split evenly over the workers."""
        n = self.spec.algorithm.samples_per_prompt if n is None else n
        encoded = self.tokenizer([p.text for p in prompts], add_special_tokens=self.add_special_tokens)[
            "input_ids"
        ]
        repeated = [ids for ids in encoded for _ in range(n)]
        return [(a, repeated[a:b]) for a, b in even_ranges(len(repeated), self.roles.generator.size)]

    def _decode(self, batch: RolloutBatch) -> list[str]:
        ids = batch.response_ids
        mask = batch.response_mask
        return self.tokenizer.batch_decode(
            [row[m].tolist() for row, m in zip(ids, mask, strict=True)], skip_special_tokens=True
        )

    def _scores(
        self, batch: RolloutBatch, timer: PhaseTimer, streamed: StreamedRollout | None = None
    ) -> dict[str, torch.Tensor]:
        """Reference log-probs, values and old log-probs; on Ray the three run at once and each
        phase's time runs until its result arrives (streamed: the micro batches were submitted as
        their samples finished; a phase is then the wait for those still running)."""
        calls: list[tuple[str, str, RoleGroup | None, str]] = [
            ("ref_logprobs", "reference", self.roles.reference, "logprobs"),
            ("values", "values", self.roles.critic, "values"),
            (
                "old_logprobs",
                "old_logprobs",
                self.roles.actor if self.needs_old_logprobs else None,
                "logprobs",
            ),
        ]
        submitted: dict[str, tuple[str, Callable[[], torch.Tensor]]] = {}
        for name, phase, group, method in calls:
            if group is None:
                continue
            if streamed is not None and streamed.streamed(name):
                submitted[name] = (phase, lambda name=name: streamed.scores(name, batch))
            else:
                submitted[name] = (phase, self._pending_rows(group, method, batch))
        out = {}
        clock = self._phase_clock()
        for name, (phase, result) in submitted.items():
            out[name] = result()
            timer.seconds[phase] = clock()
        return out

    def _pending_rows(self, group: RoleGroup, method: str, batch: RolloutBatch) -> Callable[[], torch.Tensor]:
        """Submit `method` over the rows now (_map_rows); the returned call waits for the result."""
        pending = self._map_rows(group, method, batch)
        return lambda: torch.cat(self.backend.get(pending))

    def _phase_clock(self) -> Callable[[], float]:
        """Seconds per phase for results waited for one after another: on Ray the calls run at the
        same time, so each phase counts from their common start; in-process they run one by one
        when waited for, so each counts from the end of the previous one."""
        start = time.perf_counter()
        last = [start]

        def lap() -> float:
            now = time.perf_counter()
            since = start if self.backend.remote else last[0]
            last[0] = now
            return now - since

        return lap

    def _map_rows(self, group: RoleGroup, method: str, batch: RolloutBatch) -> list[Any]:
        """Split rows evenly over the workers (every rank takes part, as ZeRO-3 needs)."""
        if group.size == 1:
            return group.call(method, batch)
        chunks = even_ranges(batch.size, group.size)
        return group.call_each(method, [(select_rows(batch, torch.arange(a, b)),) for a, b in chunks])

    def _train_shards(self, group: RoleGroup, batch: RolloutBatch) -> list[Any]:
        if group.size == 1:
            return group.call("train", batch)
        return group.call_each(
            "train",
            [
                (select_rows(batch, shard_rows(batch.size, self.plan.train_batch_size, rank, group.size)),)
                for rank in range(group.size)
            ],
        )

    def _train(self, batch: RolloutBatch, timer: PhaseTimer) -> dict[str, float]:
        clock = self._phase_clock()
        actor = self._train_shards(self.roles.actor, batch)
        critic = self._train_shards(self.roles.critic, batch) if self.roles.critic is not None else None
        metrics = dict(self.backend.get(actor)[0])
        timer.seconds["train_actor"] = clock()
        if critic is not None:
            metrics.update(self.backend.get(critic)[0])
            timer.seconds["train_critic"] = clock()
        return metrics

    def sync_weights(self) -> None:
        """The rollout engines take the updated policy (nothing to do when the actor generates):
        vllm engines over the weight-sync group, hf engines as a state dict."""
        if self.roles.rollout is None:
            return
        if self.engine_sync is not None:
            self.weight_sync_bytes = self.engine_sync.push()
            return
        self.weight_sync_bytes = self.backend.get(self.push_state_dict())[0]

    def push_state_dict(self) -> list[Any]:
        """hf engines: the actor's state dict to every engine, pending. On Ray the engines read it
        from the object store where the actor put it (never through this process); every actor
        rank takes part (ZeRO-3 gathers) and rank 0's copy is sent. Each engine returns the bytes
        it received."""
        assert self.roles.rollout is not None
        state = self.roles.actor.call("weights", to_cpu=self.backend.remote)
        if not self.backend.remote:
            state = self.backend.get(state)
        return self.roles.rollout.call("update_weights", state[0])

    def _reward_metrics(
        self, rewards: torch.Tensor, per_source: dict[str, list[float]], mask: torch.Tensor
    ) -> dict[str, float]:
        metrics = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            "response_length/mean": float(mask.sum(dim=-1).float().mean()),
        }
        for name, scores in per_source.items():  # names never collide with mean/std (reserved)
            metrics[f"reward/{name}"] = sum(scores) / len(scores)
        return metrics

    def evaluate(self) -> dict[str, float]:
        """One sample per evaluation prompt, scored by the same rewards."""
        assert self.eval_dataset is not None
        self.eval_dataset.load_state_dict({"epoch": 0, "position": 0})
        prompts = self.eval_dataset.next_batch(self.eval_dataset.num_rows)
        batch = RolloutBatch.from_generation(self._generate(prompts, 1))
        scored = self.rewards.score(
            [p.text for p in prompts], self._decode(batch), [p.label for p in prompts]
        )
        return {
            "eval/reward/mean": sum(scored.total) / len(scored.total),
            "eval/response_length/mean": float(batch.response_mask.sum(dim=-1).float().mean()),
        }
