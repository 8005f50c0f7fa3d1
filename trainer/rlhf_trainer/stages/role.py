"""The worker of an offline stage: the trained model on the DeepSpeed engine, the frozen reference
(dpo, kto), one optimizer step per `train_step` over this worker's share of the examples."""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import torch

from ..algorithms import masked_mean
from ..algorithms.logprobs import logprobs_from_logits
from ..algorithms.offline_losses import dpo_loss, pairwise_reward_loss, sequence_logprobs
from ..api.spec import RLHFJobSpec, RoleSpec
from ..engine.deepspeed_engine import TrainingEngine
from ..engine.device import DistributedContext
from ..engine.models import _prepare, load_causal_lm, load_tokenizer, model_dtype
from ..roles.base import load_rng, save_ranks, save_rng, start_role_process
from ..rollout_batch import even_ranges
from .data import Example
from .encode import Encoded, encode_completions, encode_scored_texts
from .losses import kto_loss
from .plan import stage_plan

FIELD = "spec.models.actor"


def load_reward_model(role: RoleSpec, use_gpu: bool, pad_token_id: int) -> torch.nn.Module:
    """The base model with a one-label sequence-classification head (new unless already there)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        role.model,
        num_labels=1,
        dtype=model_dtype(role, use_gpu, FIELD),
        attn_implementation=role.attn_implementation,
        trust_remote_code=role.trust_remote_code,
    )
    model.config.pad_token_id = pad_token_id
    _prepare(model, role, trainable=True)
    return model


class StageRole:
    def __init__(self, spec: RLHFJobSpec, dist: DistributedContext) -> None:
        from ..api.stages import DPOSpec, KTOSpec, RewardModelStageSpec

        self.device = start_role_process(dist, spec.training.seed)
        self.spec = spec
        self.dist = dist
        self.stage = spec.algorithm.name
        self.dpo = spec.algorithm.dpo or DPOSpec()
        self.kto = spec.algorithm.kto or KTOSpec()
        self.rm = spec.algorithm.reward_model or RewardModelStageSpec()
        role = spec.models.actor
        self.tokenizer = load_tokenizer(role.tokenizer or role.model, role.trust_remote_code)
        if self.stage == "rm":
            model = load_reward_model(role, dist.use_gpu, self.tokenizer.pad_token_id)
        else:
            model = load_causal_lm(role, dist.use_gpu, FIELD, trainable=True)
        self.reference = None
        if self.stage in ("dpo", "kto"):
            # The frozen reference: models.reference, else the actor's initial weights.
            ref_role = spec.models.reference or role
            self.reference = load_causal_lm(ref_role, dist.use_gpu, "spec.models.reference", trainable=False)
            self.reference.to(self.device)
        self.plan = stage_plan(spec, dist.world_size)
        self.engine = TrainingEngine(
            model.to(self.device),
            role,
            spec.training,
            self.plan,
            spec.training.actor_learning_rate,
            dist.use_gpu,
        )
        self.add_special_tokens = not spec.data.prompts.chat_template
        self._stand_in: list[Example] = []
        generation = spec.generation
        self.max_prompt, self.max_target = generation.max_prompt_length, generation.max_new_tokens

    def ready(self) -> bool:
        return True

    # ---------------------------------------------------------------- forward passes

    def _completions(self, prompts: list[str], targets: list[str]) -> Encoded:
        return encode_completions(
            self.tokenizer, prompts, targets, self.add_special_tokens, self.max_prompt, self.max_target
        ).to(self.device)

    @staticmethod
    def _token_logprobs(model: Any, enc: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, use_cache=False).logits
        return logprobs_from_logits(logits[:, :-1], enc.input_ids[:, 1:]), enc.target_mask[:, 1:]

    def _sequence_logps(self, model: Any, enc: Encoded, average: bool) -> torch.Tensor:
        logprobs, mask = self._token_logprobs(model, enc)
        return sequence_logprobs(logprobs, mask, average=average)

    def _scores(self, texts: list[str]) -> torch.Tensor:
        enc = encode_scored_texts(self.tokenizer, texts, self.max_prompt + self.max_target).to(self.device)
        logits = self.engine(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
        return logits[:, 0].float()

    def _loss(self, examples: list[Example]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        prompts = [e.prompt for e in examples]
        col = [e.columns for e in examples]
        if self.stage == "sft":
            logprobs, mask = self._token_logprobs(
                self.engine, self._completions(prompts, [c["response"] for c in col])
            )
            loss = -masked_mean(logprobs, mask)
            return loss, {"sft/loss": loss.detach(), "sft/tokens": mask.sum().float()}
        if self.stage == "rm":
            chosen = self._scores([p + c["chosen"] for p, c in zip(prompts, col, strict=True)])
            rejected = self._scores([p + c["rejected"] for p, c in zip(prompts, col, strict=True)])
            out = pairwise_reward_loss(chosen, rejected, margin=self.rm.margin or None)
            return out.loss, dict(out.metrics)
        if self.stage == "dpo":
            n = len(examples)
            enc = self._completions(
                prompts + prompts, [c["chosen"] for c in col] + [c["rejected"] for c in col]
            )
            average = self.dpo.loss_type == "ipo"
            policy = self._sequence_logps(self.engine, enc, average)
            with torch.no_grad():
                assert self.reference is not None
                ref = self._sequence_logps(self.reference, enc, average)
            out = dpo_loss(
                policy[:n],
                policy[n:],
                ref[:n],
                ref[n:],
                beta=self.dpo.beta,
                loss_type=self.dpo.loss_type,
                label_smoothing=self.dpo.label_smoothing,
            )
            return out.loss, dict(out.metrics)
        enc = self._completions(prompts, [c["completion"] for c in col])
        policy = self._sequence_logps(self.engine, enc, average=False)
        with torch.no_grad():
            assert self.reference is not None
            ref = self._sequence_logps(self.reference, enc, average=False)
        desirable = torch.tensor([bool(c["label"]) for c in col], device=policy.device)
        return kto_loss(
            policy,
            ref,
            desirable,
            beta=self.kto.beta,
            desirable_weight=self.kto.desirable_weight,
            undesirable_weight=self.kto.undesirable_weight,
        )

    # ---------------------------------------------------------------- train and evaluate

    def train_step(self, examples: list[Example]) -> dict[str, float]:
        """One optimizer step: this worker's examples in micro batches, gradients accumulated."""
        self.engine.train()
        self._stand_in = examples[:1]  # what an evaluation share without examples runs its passes on
        sums: dict[str, float] = defaultdict(float)
        micro = self.plan.micro_batch_size
        passes = 0
        for start in range(0, len(examples), micro):
            loss, metrics = self._loss(examples[start : start + micro])
            self.engine.backward(loss)
            norm = self.engine.step()
            if norm is not None:
                sums[f"{self.stage}/grad_norm"] += norm
            for key, value in metrics.items():
                sums[key] += float(value)
            passes += 1
        if passes != self.plan.gradient_accumulation:
            raise RuntimeError(f"{passes} micro batches for a window of {self.plan.gradient_accumulation}")
        out = _reduce(dict(sums), passes)
        out[f"{self.stage}/lr"] = self.engine.learning_rate
        return out

    @torch.no_grad()
    def evaluate(self, examples: list[Example]) -> dict[str, float]:
        """The stage's loss and diagnostics over this worker's share of the held-out examples."""
        self.engine.eval()
        sums: dict[str, float] = defaultdict(float)
        micro = self.plan.micro_batch_size
        shares = [(a, b) for a, b in even_ranges(len(examples), max(1, -(-len(examples) // micro))) if a < b]
        for a, b in shares:
            _, metrics = self._loss(examples[a:b])
            for key, value in metrics.items():
                sums[key] += float(value)
        # ZeRO-3 ranks each make as many passes as the busiest (every pass gathers partitions).
        for _ in range(self.engine.forward_passes(len(shares)) - len(shares)):
            self._loss(examples[:1] or self._stand_in)
        return _reduce(dict(sums), max(1, len(shares)))

    # ---------------------------------------------------------------- checkpoints

    def save_checkpoint(self, directory: str) -> None:
        self.engine.save(directory)
        save_rng(directory, self.dist.rank)
        if self.dist.rank == 0:
            save_ranks(directory, self.dist.world_size, self.engine.zero_stage)

    def load_checkpoint(self, directory: str, universal: bool = False) -> None:
        self.engine.load(directory, universal)
        load_rng(directory, self.dist.rank)

    def export_hf(self, directory: str) -> None:
        """The trained model in HF format with its tokenizer (rm: AutoModelForSequenceClassification,
        num_labels 1, what the reward role loads); rank 0 writes."""
        state = self.engine.full_state_dict(to_cpu=True, rank0_only=True)
        if self.dist.rank != 0:
            return
        os.makedirs(directory, exist_ok=True)
        self.engine.module.save_pretrained(directory, state_dict=state)
        self.tokenizer.save_pretrained(directory)


def _reduce(sums: dict[str, float], passes: int) -> dict[str, float]:
    """Means over micro batches; kto's reward sums become per-row means."""
    out = {}
    for key, value in sums.items():
        if key.endswith("_count"):
            continue
        if key.endswith("_sum"):
            count = sums[key.removesuffix("_sum") + "_count"]
            if count > 0:
                out[key.removesuffix("_sum")] = value / count
            continue
        out[key] = value / passes
    if "kto/chosen_reward" in out and "kto/rejected_reward" in out:
        out["kto/margin"] = out["kto/chosen_reward"] - out["kto/rejected_reward"]
    return out
