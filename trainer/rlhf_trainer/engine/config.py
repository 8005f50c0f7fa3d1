"""The DeepSpeed config and learning-rate schedule of a training role, as pure functions of the spec."""

from __future__ import annotations

import math
from typing import Any

from ..api.spec import RoleSpec, TrainingSpec
from ..batch_plan import BatchPlan


def effective_precision(role: RoleSpec, use_gpu: bool) -> str:
    """bf16/fp16 are honoured on GPUs only; CPU kernels train in fp32 (logged by the caller)."""
    return role.precision if use_gpu else "fp32"


def deepspeed_config(
    role: RoleSpec, training: TrainingSpec, plan: BatchPlan, use_gpu: bool
) -> dict[str, Any]:
    """The config handed to deepspeed.initialize for one training role."""
    precision = effective_precision(role, use_gpu)
    zero: dict[str, Any] = {"stage": role.zero_stage}
    if role.zero_stage >= 1:
        zero.update(overlap_comm=use_gpu, contiguous_gradients=True, reduce_bucket_size=5e8)
    # Offload moves states from GPU to host memory. On CPU they are there already, but the same
    # DeepSpeed path runs (host-side fp32 partitions, the optimizer step on them), so CPU ranks
    # prove it; pinned memory is a CUDA notion.
    if role.offload.optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    if role.offload.parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": use_gpu}
    if role.zero_stage == 3:
        # Parameters under the threshold stay whole on every rank (fewer, larger gathers on GPUs);
        # CPU ranks, there to exercise the path, partition every parameter (tiny test models too).
        zero.update(
            stage3_gather_16bit_weights_on_model_save=True,
            stage3_param_persistence_threshold=1e4 if use_gpu else 0,
        )
    return {
        "train_batch_size": plan.train_batch_size,
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.gradient_accumulation,
        "gradient_clipping": training.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        # torch's AdamW is passed in (no compiled op needed); ZeRO accepts it with this flag.
        "zero_allow_untested_optimizer": True,
        # On CPU the offloaded optimizer is torch's AdamW (DeepSpeedCPUAdam is a compiled op).
        "zero_force_ds_cpu_optimizer": use_gpu,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def uses_deepspeed_cpu_adam(role: RoleSpec, use_gpu: bool) -> bool:
    """Optimizer offload needs DeepSpeed's CPU Adam (a compiled op); everything else uses torch's."""
    return use_gpu and role.offload.optimizer


def lr_multiplier(step: int, total_steps: int, training: TrainingSpec) -> float:
    """Multiplier of the peak learning rate before optimizer step `step` (0-based): linear warmup
    over warmupRatio x total steps, then constant or cosine down to minLrRatio."""
    warmup = math.ceil(training.warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if training.lr_schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    floor = training.min_lr_ratio
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
