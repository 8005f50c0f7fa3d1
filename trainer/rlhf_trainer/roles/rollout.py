"""A rollout engine: its own copy of the policy that samples completions and takes the actor's
weights after every update.

`hf`: transformers generate on a copy of the model; the weights arrive as a state dict.
`vllm`: a vLLM engine; the weights stream over the weight-sync group from the actor's rank 0
(`open_weight_sync` once, `receive_weights` after each update, `close` at the end).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch

from ..api.spec import RLHFJobSpec
from ..engine.device import DistributedContext, device_for, prepare_environment
from ..generation import GenerationOutput, HFGenerationEngine, VLLMGenerationEngine
from ..generation.transport import TensorMeta
from ..rng import seed_everything
from .base import load_rng, save_rng

FIELD = "spec.models.rollout"


def sequences_per_engine(spec: RLHFJobSpec) -> int:
    """Completions one engine generates per call (a rollout split evenly over the engines)."""
    total = spec.training.rollout_batch_size * spec.algorithm.samples_per_prompt
    return math.ceil(total / max(1, spec.models.rollout.engines))


class RolloutRole:
    def __init__(self, spec: RLHFJobSpec, dist: DistributedContext) -> None:
        prepare_environment(dist.use_gpu)
        if dist.num_threads > 0 and not dist.use_gpu:
            # Before vLLM starts: its CPU worker turns set_num_threads into a no-op afterwards,
            # and its engine drops torch to one thread unless OMP_NUM_THREADS is set.
            torch.set_num_threads(dist.num_threads)
            os.environ.setdefault("OMP_NUM_THREADS", str(dist.num_threads))
        seed_everything(spec.training.seed + dist.rank)
        self.rank = dist.rank
        self.device = device_for(dist.use_gpu)
        from ..engine.models import eos_token_ids, eos_token_ids_at, load_causal_lm, load_tokenizer

        actor = spec.models.actor
        tokenizer = load_tokenizer(actor.tokenizer or actor.model, actor.trust_remote_code)
        if spec.models.rollout.engine == "vllm":
            self.engine: HFGenerationEngine | VLLMGenerationEngine = VLLMGenerationEngine(
                spec,
                dist.rank,
                dist.use_gpu,
                eos_token_ids_at(tokenizer, actor.model),
                tokenizer.pad_token_id,
                colocated=spec.models.colocate.all,
                sequences_per_call=sequences_per_engine(spec),
            )
            return
        model = load_causal_lm(actor, dist.use_gpu, FIELD, trainable=False).to(self.device)
        self.engine = HFGenerationEngine(
            model, spec.generation, eos_token_ids(tokenizer, model), tokenizer.pad_token_id, self.device
        )
        # Overlapped steps train on samples of an older policy: the correction needs the
        # sampling log-probabilities (vllm engines always report them).
        self.engine.record_logprobs = spec.training.max_staleness > 0

    def ready(self) -> bool:
        return True

    def generate(self, prompts: list[list[int]]) -> GenerationOutput:
        return self.engine.generate(prompts)

    def generate_stream(self, prompts: list[list[int]]) -> Iterator[tuple[list[int], GenerationOutput]]:
        """The completions as they finish (a Ray streaming generator: streaming.py): vllm engines
        hand over each engine step's finished requests; hf engines sample a static batch and
        hand over the whole call at its end."""
        if isinstance(self.engine, VLLMGenerationEngine):
            yield from self.engine.generate_stream(prompts)
        elif prompts:
            yield list(range(len(prompts))), self.engine.generate(prompts)

    # ---------------------------------------------------------------- weights

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> int:
        """hf engines: the actor's full state dict. Returns the bytes received."""
        assert isinstance(self.engine, HFGenerationEngine)
        self.engine.update_weights(state_dict)
        return sum(t.numel() * t.element_size() for t in state_dict.values())

    def open_weight_sync(
        self,
        host: str,
        port: int,
        first_rank: int,
        world_size: int,
        backend: str,
        buckets: list[list[TensorMeta]],
    ) -> None:
        """vllm engines: join the weight-sync group (the actor's rank 0 joins at the same time)."""
        assert isinstance(self.engine, VLLMGenerationEngine)
        self.engine.open_weight_group(host, port, first_rank, world_size, backend, buckets)

    def receive_weights(self) -> int:
        assert isinstance(self.engine, VLLMGenerationEngine)
        return self.engine.receive_weights()

    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """vllm engines: log-probabilities of fixed token sequences under the engine's weights."""
        assert isinstance(self.engine, VLLMGenerationEngine)
        return self.engine.sequence_logprobs(sequences)

    def sleep(self) -> None:
        """Colocated vllm engines release the GPU while the actor trains (no-op elsewhere)."""
        if isinstance(self.engine, VLLMGenerationEngine):
            self.engine.sleep()

    def close(self) -> None:
        """Stop the engine before the process ends (called by the backend's shutdown)."""
        if isinstance(self.engine, VLLMGenerationEngine):
            self.engine.close()

    def save_checkpoint(self, directory: str) -> None:
        save_rng(directory, self.rank)

    def load_checkpoint(self, directory: str) -> None:
        load_rng(directory, self.rank)
