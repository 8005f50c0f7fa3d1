"""The actor: the policy under training (DeepSpeed), its PPO-clip update, and, when the rollout
runs inside it (hf engine with engines: 0), its generation."""

from __future__ import annotations

import os
from collections import defaultdict

import torch

from ..algorithms import default_loss_aggregation, kl_loss, kl_penalty, masked_mean, ppo_policy_loss
from ..api.spec import RLHFJobSpec
from ..batch_plan import plan_batches
from ..engine.deepspeed_engine import TrainingEngine
from ..engine.device import DistributedContext
from ..engine.models import eos_token_ids, load_causal_lm, load_tokenizer
from ..generation import GenerationOutput, HFGenerationEngine
from ..rollout_batch import RolloutBatch
from .base import load_rng, save_rng, start_role_process
from .forward import per_token_outputs, policy_forward

FIELD = "spec.models.actor"


class ActorRole:
    def __init__(self, spec: RLHFJobSpec, dist: DistributedContext, generates: bool) -> None:
        self.device = start_role_process(dist, spec.training.seed)
        self.spec = spec
        self.dist = dist
        self.plan = plan_batches(spec, dist.world_size)
        role = spec.models.actor
        self.tokenizer = load_tokenizer(role.tokenizer or role.model, role.trust_remote_code)
        model = load_causal_lm(role, dist.use_gpu, FIELD, trainable=True).to(self.device)
        self.engine = TrainingEngine(
            model, role, spec.training, self.plan, spec.training.actor_learning_rate, dist.use_gpu
        )
        self.loss_aggregation = spec.algorithm.loss_aggregation or default_loss_aggregation(spec.algorithm.name)
        self.generator = (
            HFGenerationEngine(
                self.engine.module, spec.generation, eos_token_ids(self.tokenizer, model),
                self.tokenizer.pad_token_id, self.device,
            )
            if generates
            else None
        )

    def ready(self) -> bool:
        return True

    # ---------------------------------------------------------------- rollout

    def generate(self, prompts: list[list[int]]) -> GenerationOutput:
        if self.generator is None:
            raise RuntimeError("this actor does not generate: the job has separate rollout engines")
        return self.generator.generate(prompts)

    def logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """Log-probabilities [B, R] of the completions under the current policy (no gradient)."""
        self.engine.eval()
        temperature = self.spec.generation.temperature
        return per_token_outputs(
            lambda micro: policy_forward(self.engine, micro, temperature, with_entropy=False)[0],
            batch, self.plan.micro_batch_size, self.device,
        )

    # ---------------------------------------------------------------- update

    def train(self, batch: RolloutBatch) -> dict[str, float]:
        """PPO epochs over this worker's shard: one optimizer step per trainBatchSize samples."""
        if batch.advantages is None:
            raise ValueError("the actor update needs advantages")
        if batch.old_logprobs is None and not self.plan.single_update:
            raise ValueError("several optimizer steps per rollout need the rollout-time log-probabilities")
        algorithm, generation = self.spec.algorithm, self.spec.generation
        kl_as_loss = algorithm.kl.as_loss and algorithm.kl.coef > 0
        if kl_as_loss and batch.ref_logprobs is None:
            raise ValueError("a KL loss needs the reference log-probabilities")
        self.engine.train()
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)

        def record(key: str, value: float) -> None:
            sums[key] += value
            counts[key] += 1

        for _ in range(algorithm.epochs):
            for micro in batch.micro_batches(self.plan.micro_batch_size):
                micro = micro.to(self.device)
                mask = micro.response_mask
                logprobs, entropy = policy_forward(self.engine, micro, generation.temperature, with_entropy=True)
                # Single update: the policy is unchanged until the optimizer steps, so the
                # rollout-time log-probabilities are this forward's.
                old = micro.old_logprobs if micro.old_logprobs is not None else logprobs.detach()
                assert micro.advantages is not None
                out = ppo_policy_loss(
                    logprobs, old, micro.advantages, mask,
                    clip_low=algorithm.clip.low, clip_high=algorithm.clip.high, dual_clip=algorithm.clip.dual,
                    loss_agg=self.loss_aggregation, max_response_length=generation.max_new_tokens,
                )
                loss = out.loss
                if kl_as_loss:
                    assert micro.ref_logprobs is not None
                    kl_term = kl_loss(
                        logprobs, micro.ref_logprobs, mask, algorithm.kl.estimator,
                        loss_agg=self.loss_aggregation, max_response_length=generation.max_new_tokens,
                    )
                    loss = loss + algorithm.kl.coef * kl_term
                    record("actor/kl_loss", float(kl_term.detach()))
                    kl = kl_penalty(logprobs.detach(), micro.ref_logprobs, algorithm.kl.estimator, mask)
                    record("kl/mean", float(masked_mean(kl, mask)))
                self.engine.backward(loss)
                norm = self.engine.step()
                if norm is not None:
                    record("actor/grad_norm", norm)
                record("actor/loss", float(loss.detach()))
                assert entropy is not None
                record("actor/entropy", float(masked_mean(entropy, mask)))
                for key in ("actor/pg_loss", "actor/clipfrac", "actor/approx_kl"):
                    record(key, float(out.metrics[key]))
        metrics = {key: sums[key] / counts[key] for key in sums}
        metrics["actor/lr"] = self.engine.learning_rate
        return metrics

    # ---------------------------------------------------------------- weights and checkpoints

    def weights(self, to_cpu: bool) -> dict[str, torch.Tensor]:
        return self.engine.full_state_dict(to_cpu)

    def save_checkpoint(self, directory: str) -> None:
        self.engine.save(directory)
        save_rng(directory, self.dist.rank)

    def load_checkpoint(self, directory: str) -> None:
        self.engine.load(directory)
        load_rng(directory, self.dist.rank)

    def export_hf(self, directory: str) -> None:
        """The policy in HF format (from_pretrained) with its tokenizer; rank 0 writes."""
        state = self.engine.full_state_dict(to_cpu=True)
        if self.dist.rank != 0:
            return
        os.makedirs(directory, exist_ok=True)
        self.engine.module.save_pretrained(directory, state_dict=state)
        self.tokenizer.save_pretrained(directory)
