"""Prompt data: local JSONL/JSON/Parquet files or a named HF dataset, in a resumable order."""

from .dataset import Prompt, PromptDataset
from .loading import DataConfigError

__all__ = ["DataConfigError", "Prompt", "PromptDataset"]
