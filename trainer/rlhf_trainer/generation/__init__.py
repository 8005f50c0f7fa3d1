"""Generation engines behind one interface: `hf` (transformers generate) and `vllm` (GPU)."""

from .base import GenerationEngine, GenerationOutput, completion_mask, left_pad, merge_outputs
from .hf import HFGenerationEngine, sampling_config
from .vllm import VLLM_UNAVAILABLE, VLLMGenerationEngine

__all__ = [
    "GenerationEngine",
    "GenerationOutput",
    "HFGenerationEngine",
    "VLLMGenerationEngine",
    "VLLM_UNAVAILABLE",
    "completion_mask",
    "left_pad",
    "merge_outputs",
    "sampling_config",
]
