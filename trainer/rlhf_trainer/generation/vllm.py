"""The `vllm` generation engine (GPU). Its place in the loop is fixed: `generate` per rollout,
`update_weights` after every actor update. The implementation comes with the [vllm] extra."""

from __future__ import annotations

import torch

from .base import GenerationOutput

VLLM_UNAVAILABLE = (
    "spec.models.rollout.engine: vllm engine needs GPUs and the [vllm] extra "
    "(pip install 'rlhf-operator[vllm]'); use engine: hf on CPU"
)


class VLLMGenerationEngine:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(VLLM_UNAVAILABLE)

    def generate(self, prompts: list[list[int]]) -> GenerationOutput:  # pragma: no cover - never built
        raise RuntimeError(VLLM_UNAVAILABLE)

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:  # pragma: no cover
        raise RuntimeError(VLLM_UNAVAILABLE)
