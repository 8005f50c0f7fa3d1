"""Training engine (DeepSpeed), device/process-group setup and model loading."""

from .config import deepspeed_config, effective_precision, lr_multiplier
from .device import DistributedContext, free_port, init_distributed, prepare_environment

__all__ = [
    "DistributedContext",
    "deepspeed_config",
    "effective_precision",
    "free_port",
    "init_distributed",
    "lr_multiplier",
    "prepare_environment",
]
