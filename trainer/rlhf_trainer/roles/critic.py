"""The critic (ppo): a value model trained by DeepSpeed on the GAE returns."""

from __future__ import annotations

from collections import defaultdict

import torch

from ..algorithms import value_loss
from ..api.spec import RLHFJobSpec
from ..batch_plan import plan_batches
from ..engine.deepspeed_engine import TrainingEngine
from ..engine.device import DistributedContext
from ..engine.models import load_value_model
from ..rollout_batch import RolloutBatch
from .base import load_rng, save_ranks, save_rng, start_role_process
from .forward import per_token_outputs, value_forward

FIELD = "spec.models.critic"


class CriticRole:
    def __init__(self, spec: RLHFJobSpec, dist: DistributedContext) -> None:
        if spec.models.critic is None:
            raise ValueError(f"{FIELD}: required for {spec.algorithm.name}")
        self.device = start_role_process(dist, spec.training.seed)
        self.spec = spec
        self.dist = dist
        self.plan = plan_batches(spec, dist.world_size)
        role = spec.models.critic
        model = load_value_model(role, dist.use_gpu, FIELD).to(self.device)
        self.engine = TrainingEngine(
            model, role, spec.training, self.plan, spec.training.critic_learning_rate, dist.use_gpu
        )

    def ready(self) -> bool:
        return True

    def values(self, batch: RolloutBatch) -> torch.Tensor:
        self.engine.eval()
        return per_token_outputs(
            lambda micro: value_forward(self.engine, micro),
            batch,
            self.plan.micro_batch_size,
            self.device,
            passes=self.engine.forward_passes,
        )

    def train(self, batch: RolloutBatch) -> dict[str, float]:
        if batch.values is None or batch.returns is None:
            raise ValueError("the critic update needs the rollout-time values and the returns")
        self.engine.train()
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for _ in range(self.spec.algorithm.epochs):
            for micro in batch.micro_batches(self.plan.micro_batch_size):
                micro = micro.to(self.device)
                assert micro.values is not None and micro.returns is not None
                out = value_loss(
                    value_forward(self.engine, micro),
                    micro.values,
                    micro.returns,
                    micro.response_mask,
                    clip_range=self.spec.algorithm.clip.value,
                )
                self.engine.backward(out.loss)
                norm = self.engine.step()
                if norm is not None:
                    sums["critic/grad_norm"] += norm
                    counts["critic/grad_norm"] += 1
                for key in ("critic/vf_loss", "critic/vf_clipfrac", "critic/values_mean"):
                    sums[key] += float(out.metrics[key])
                    counts[key] += 1
        metrics = {key: sums[key] / counts[key] for key in sums}
        metrics["critic/lr"] = self.engine.learning_rate
        return metrics

    def save_checkpoint(self, directory: str) -> None:
        self.engine.save(directory)
        save_rng(directory, self.dist.rank)
        if self.dist.rank == 0:
            save_ranks(directory, self.dist.world_size, self.engine.zero_stage)

    def load_checkpoint(self, directory: str, universal: bool = False) -> None:
        self.engine.load(directory, universal)
        load_rng(directory, self.dist.rank)
