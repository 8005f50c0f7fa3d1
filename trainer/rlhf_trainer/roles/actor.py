"""The actor: the policy under training (DeepSpeed), its PPO-clip update, and, when the rollout
runs inside it (hf engine with engines: 0), its generation."""

from __future__ import annotations

import os
from collections import defaultdict

import torch

from ..algorithms import (
    default_loss_aggregation,
    kl_loss,
    kl_penalty,
    masked_mean,
    ppo_policy_loss,
    truncated_importance_weights,
)
from ..api.spec import RLHFJobSpec
from ..batch_plan import check_token_budget, plan_batches
from ..engine.deepspeed_engine import TrainingEngine
from ..engine.device import DistributedContext, free_port, node_address
from ..engine.models import eos_token_ids, load_causal_lm, load_tokenizer
from ..generation import GenerationOutput, HFGenerationEngine
from ..generation.transport import TensorMeta, WeightGroup, plan_buckets, send_bucket, tensor_meta
from ..packing import enable_packing, packed_policy_forward
from ..rollout_batch import RolloutBatch
from .base import load_rng, save_ranks, save_rng, start_role_process
from .forward import per_token_outputs, policy_forward
from .micro_batches import train_micro_batches

FIELD = "spec.models.actor"


class ActorRole:
    def __init__(self, spec: RLHFJobSpec, dist: DistributedContext, generates: bool) -> None:
        self.device = start_role_process(dist, spec.training.seed)
        self.spec = spec
        self.dist = dist
        self.plan = plan_batches(spec, dist.world_size)
        check_token_budget(spec, dist.world_size)
        role = spec.models.actor
        self.tokenizer = load_tokenizer(role.tokenizer or role.model, role.trust_remote_code)
        model = load_causal_lm(role, dist.use_gpu, FIELD, trainable=True).to(self.device)
        packed = spec.training.packing and enable_packing(model)
        self.forward = packed_policy_forward if packed else policy_forward
        self.engine = TrainingEngine(
            model, role, spec.training, self.plan, spec.training.actor_learning_rate, dist.use_gpu
        )
        self.loss_aggregation = spec.algorithm.loss_aggregation or default_loss_aggregation(
            spec.algorithm.name
        )
        self.generator = (
            HFGenerationEngine(
                self.engine.module,
                spec.generation,
                eos_token_ids(self.tokenizer, model),
                self.tokenizer.pad_token_id,
                self.device,
                synced=role.zero_stage == 3 and dist.world_size > 1,
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
            lambda micro: self.forward(self.engine, micro, temperature, with_entropy=False)[0],
            batch,
            self.plan.micro_batch_size,
            self.device,
            passes=self.engine.forward_passes,
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
        maxima: dict[str, float] = {}

        def record(key: str, value: float) -> None:
            sums[key] += value
            counts[key] += 1

        correction = algorithm.rollout_correction

        for _ in range(algorithm.epochs):
            for micro, share in train_micro_batches(
                batch, self.plan, self.spec.training.micro_batch_tokens, self.loss_aggregation
            ):
                micro = micro.to(self.device)
                mask = micro.response_mask
                logprobs, entropy = self.forward(
                    self.engine, micro, generation.temperature, with_entropy=True
                )
                # Single update: the policy is unchanged until the optimizer steps, so the
                # rollout-time log-probabilities are this forward's.
                old = micro.old_logprobs if micro.old_logprobs is not None else logprobs.detach()
                assert micro.advantages is not None
                weights = None
                if micro.rollout_logprobs is not None:
                    # The trainer's rollout-time log-probs against the engine's sampling ones.
                    tis = truncated_importance_weights(old, micro.rollout_logprobs, mask, correction.cap)
                    weights = tis.weights if correction.mode == "tis" else None
                    for key, value in tis.metrics.items():
                        if key.endswith("_max"):
                            maxima[key] = max(maxima.get(key, float("-inf")), float(value))
                        else:
                            record(key, float(value))
                out = ppo_policy_loss(
                    logprobs,
                    old,
                    micro.advantages,
                    mask,
                    clip_low=algorithm.clip.low,
                    clip_high=algorithm.clip.high,
                    dual_clip=algorithm.clip.dual,
                    loss_agg=self.loss_aggregation,
                    max_response_length=generation.max_new_tokens,
                    importance_weights=weights,
                )
                loss = out.loss
                if kl_as_loss:
                    assert micro.ref_logprobs is not None
                    kl_term = kl_loss(
                        logprobs,
                        micro.ref_logprobs,
                        mask,
                        algorithm.kl.estimator,
                        loss_agg=self.loss_aggregation,
                        max_response_length=generation.max_new_tokens,
                    )
                    loss = loss + algorithm.kl.coef * kl_term
                    record("actor/kl_loss", float(kl_term.detach()))
                    kl = kl_penalty(logprobs.detach(), micro.ref_logprobs, algorithm.kl.estimator, mask)
                    record("kl/mean", float(masked_mean(kl, mask)))
                self.engine.backward(loss, None if share is None else share.weight)
                norm = self.engine.step(None if share is None else share.boundary)
                if norm is not None:
                    record("actor/grad_norm", norm)
                record("actor/loss", float(loss.detach()))
                assert entropy is not None
                record("actor/entropy", float(masked_mean(entropy, mask)))
                for key in ("actor/pg_loss", "actor/clipfrac", "actor/approx_kl"):
                    record(key, float(out.metrics[key]))
        metrics = {key: sums[key] / counts[key] for key in sums}
        metrics.update(maxima)
        metrics["actor/lr"] = self.engine.learning_rate
        return metrics

    # ---------------------------------------------------------------- weights and checkpoints

    def weights(self, to_cpu: bool) -> dict[str, torch.Tensor]:
        """The full weights on rank 0 (every rank takes part in ZeRO-3's gathers; the others
        return {}, so nothing but rank 0's copy travels)."""
        return self.engine.full_state_dict(to_cpu, rank0_only=True)

    # ---------------------------------------------------------------- weight sync to vllm engines

    def weight_buckets(self, bucket_bytes: int) -> list[list[TensorMeta]]:
        """The parameters in the order and buckets they are sent in (the same on every rank)."""
        return plan_buckets(
            [
                tensor_meta(name, p, self.engine.full_shape(p))
                for name, p in self.engine.module.named_parameters()
            ],
            bucket_bytes,
        )

    def weight_sync_endpoint(self) -> tuple[str, int]:
        """Address and a free port on this node for the weight-sync group's store (rank 0 serves it)."""
        return node_address(), free_port()

    def open_weight_sync(
        self, host: str, port: int, world_size: int, backend: str, bucket_bytes: int
    ) -> None:
        """Rank 0 joins the weight-sync group as its sender; every rank remembers the buckets (under
        ZeRO-3 every rank takes part in gathering them)."""
        self._sync_buckets = self.weight_buckets(bucket_bytes)
        self._sync_group = WeightGroup(host, port, 0, world_size, backend) if self.dist.rank == 0 else None

    def broadcast_weights(self) -> int:
        """Stream the current weights to the engines, bucket by bucket (all ranks call this: under
        ZeRO-3 each bucket is gathered, sent by rank 0, and released before the next). Returns
        the bytes rank 0 sent (0 on the other ranks)."""
        params = dict(self.engine.module.named_parameters())
        sent = 0
        for bucket in self._sync_buckets:
            tensors = [params[meta.name] for meta in bucket]
            with torch.no_grad(), self.engine.gathered(tensors):
                if self._sync_group is not None:
                    sent += send_bucket(self._sync_group, bucket, [t.data for t in tensors])
        return sent

    def close(self) -> None:
        """Leave the weight-sync group (called by the backend's shutdown)."""
        group, self._sync_group = getattr(self, "_sync_group", None), None
        if group is not None:
            group.close()

    def save_checkpoint(self, directory: str) -> None:
        self.engine.save(directory)
        save_rng(directory, self.dist.rank)
        if self.dist.rank == 0:
            save_ranks(directory, self.dist.world_size, self.engine.zero_stage)

    def load_checkpoint(self, directory: str, universal: bool = False) -> None:
        self.engine.load(directory, universal)
        load_rng(directory, self.dist.rank)

    def export_hf(self, directory: str) -> None:
        """The policy in HF format (from_pretrained) with its tokenizer; rank 0 writes (every rank
        takes part in ZeRO-3's parameter-by-parameter gathers)."""
        state = self.engine.full_state_dict(to_cpu=True, rank0_only=True)
        if self.dist.rank != 0:
            return
        os.makedirs(directory, exist_ok=True)
        self.engine.module.save_pretrained(directory, state_dict=state)
        self.tokenizer.save_pretrained(directory)
