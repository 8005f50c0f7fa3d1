"""A rollout engine: its own copy of the policy that samples completions and takes the actor's
weights after every update."""

from __future__ import annotations

import torch

from ..api.spec import RLHFJobSpec
from ..engine.device import DistributedContext, device_for, prepare_environment
from ..generation import GenerationOutput, HFGenerationEngine, VLLMGenerationEngine
from ..rng import seed_everything
from .base import load_rng, save_rng

FIELD = "spec.models.rollout"


class RolloutRole:
    def __init__(self, spec: RLHFJobSpec, dist: DistributedContext) -> None:
        prepare_environment(dist.use_gpu)
        if dist.num_threads > 0 and not dist.use_gpu:
            torch.set_num_threads(dist.num_threads)
        seed_everything(spec.training.seed + dist.rank)
        self.rank = dist.rank
        self.device = device_for(dist.use_gpu)
        if spec.models.rollout.engine == "vllm":
            self.engine = VLLMGenerationEngine(spec, dist)
            return
        from ..engine.models import eos_token_ids, load_causal_lm, load_tokenizer

        actor = spec.models.actor
        tokenizer = load_tokenizer(actor.tokenizer or actor.model, actor.trust_remote_code)
        model = load_causal_lm(actor, dist.use_gpu, FIELD, trainable=False).to(self.device)
        self.engine = HFGenerationEngine(
            model, spec.generation, eos_token_ids(tokenizer, model), tokenizer.pad_token_id, self.device
        )

    def ready(self) -> bool:
        return True

    def generate(self, prompts: list[list[int]]) -> GenerationOutput:
        return self.engine.generate(prompts)

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.engine.update_weights(state_dict)

    def save_checkpoint(self, directory: str) -> None:
        save_rng(directory, self.rank)

    def load_checkpoint(self, directory: str) -> None:
        load_rng(directory, self.rank)
