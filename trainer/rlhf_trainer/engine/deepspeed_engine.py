"""A DeepSpeed training engine around one model: optimizer, schedule, accumulation, clipping,
ZeRO, checkpoints and a full state dict for weight sync and HF export."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..api.spec import RoleSpec, TrainingSpec
from ..batch_plan import BatchPlan
from .config import deepspeed_config, effective_precision, lr_multiplier, uses_deepspeed_cpu_adam

log = logging.getLogger(__name__)

# Betas of most LLM RL recipes: a shorter second-moment memory than torch's 0.999 keeps Adam
# responsive to the non-stationary policy-gradient signal.
ADAM_BETAS = (0.9, 0.95)
CHECKPOINT_TAG = "engine"
UNIVERSAL_TAG = "engine_universal"


class TrainingEngine:
    """Wraps deepspeed.initialize for one role (actor or critic).

    Call `backward(loss)` per micro batch and `step()` after each; DeepSpeed averages gradients
    over gradientAccumulation micro batches and only the last of them updates the weights.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        role: RoleSpec,
        training: TrainingSpec,
        plan: BatchPlan,
        learning_rate: float,
        use_gpu: bool,
    ) -> None:
        import deepspeed

        self.role = role
        self.zero_stage = role.zero_stage
        # ZeRO 0 in fp32 clips inside step() without recording the norm; the other modes record it.
        self._manual_grad_norm = role.zero_stage == 0 and effective_precision(role, use_gpu) == "fp32"
        params = [p for p in module.parameters() if p.requires_grad]
        if uses_deepspeed_cpu_adam(role, use_gpu):
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer: torch.optim.Optimizer = DeepSpeedCPUAdam(
                params,
                lr=learning_rate,
                betas=ADAM_BETAS,
                weight_decay=training.weight_decay,
                adamw_mode=True,
            )
        else:
            optimizer = torch.optim.AdamW(
                params, lr=learning_rate, betas=ADAM_BETAS, weight_decay=training.weight_decay
            )
        total = plan.total_optimizer_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_multiplier(step, total, training)
        )
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(role, training, plan, use_gpu),
            dist_init_required=False,
        )

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.engine(*args, **kwargs)

    def train(self) -> None:
        self.engine.train()

    def eval(self) -> None:
        self.engine.eval()

    def backward(self, loss: torch.Tensor, weight: float | None = None) -> None:
        """`weight`: the micro batch's share of the train batch (token-budget micro batches),
        instead of DeepSpeed's 1 / gradientAccumulation."""
        if weight is None:
            self.engine.backward(loss)
        else:
            self.engine.backward(loss * weight, scale_wrt_gas=False)

    def step(self, boundary: bool | None = None) -> float | None:
        """Finish one micro batch. Returns the gradient norm (before clipping) when this micro
        batch closed an accumulation window and the optimizer stepped, else None. `boundary`:
        whether it closes the window (token-budget micro batches; None: DeepSpeed counts)."""
        if boundary is not None:
            self.engine.set_gradient_accumulation_boundary(boundary)
        boundary = self.engine.is_gradient_accumulation_boundary()
        manual_norm = self._grad_norm() if boundary and self._manual_grad_norm else None
        self.engine.step()
        if not boundary:
            return None
        if manual_norm is not None:
            return manual_norm
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def _grad_norm(self) -> float:
        grads = [p.grad.detach().float().norm() for p in self.module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    @property
    def learning_rate(self) -> float:
        return float(self.engine.get_lr()[0])

    # ---------------------------------------------------------------- state

    def full_state_dict(self, to_cpu: bool, rank0_only: bool = False) -> dict[str, torch.Tensor]:
        """Every parameter and buffer in full, detached. Under ZeRO-3 every rank must call it: the
        partitions are gathered one parameter at a time (never the whole model at once) and copied
        to host memory; with `rank0_only` the other ranks take part in the gathers and return {}."""
        keep = not rank0_only or self.rank == 0
        if self.zero_stage != 3:
            if not keep:
                return {}
            return {
                k: (v.detach().cpu() if to_cpu else v.detach()) for k, v in self.module.state_dict().items()
            }
        state: dict[str, torch.Tensor] = {}
        for name, param in self.module.named_parameters():
            with self.gathered([param]):
                if keep:
                    state[name] = param.data.detach().clone().cpu()
        if not keep:
            return {}
        # Tied weights (one parameter under two names) and persistent buffers (never partitioned).
        named = {id(p): name for name, p in self.module.named_parameters()}
        full: dict[str, torch.Tensor] = {}
        for name, value in self.module.state_dict(keep_vars=True).items():
            if id(value) in named:
                full[name] = state[named[id(value)]]
            else:
                full[name] = value.detach().clone().cpu()
        return full

    @property
    def rank(self) -> int:
        return self.engine.global_rank

    @property
    def world_size(self) -> int:
        return self.engine.world_size

    def forward_passes(self, local: int) -> int:
        """How many forward passes every rank must make when this one needs `local`: the most of
        any rank under ZeRO-3 with several ranks (each forward gathers partitions, a collective
        every rank must join), else `local`."""
        if self.zero_stage != 3 or self.world_size == 1:
            return local
        import torch.distributed as dist

        count = torch.tensor([local], dtype=torch.long)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return int(count.item())

    def full_shape(self, param: torch.nn.Parameter) -> tuple[int, ...]:
        """A parameter's shape in the model (ZeRO-3 keeps only a flat partition on each rank)."""
        return tuple(getattr(param, "ds_shape", param.shape))

    @contextmanager
    def gathered(self, params: list[torch.nn.Parameter]) -> Iterator[None]:
        """`params` in full on every rank inside the block (a collective under ZeRO-3: every rank
        must enter it with the same parameters); ZeRO 0-2 hold them in full already."""
        if self.zero_stage != 3:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield

    def save(self, directory: str) -> None:
        self.engine.save_checkpoint(directory, tag=CHECKPOINT_TAG)

    def load(self, directory: str, universal: bool = False) -> None:
        """Read back this rank's states; `universal`: from the universal form of a checkpoint
        written by another number of ranks (UNIVERSAL_TAG, made by `checkpoint_ranks`)."""
        tag = UNIVERSAL_TAG if universal else CHECKPOINT_TAG
        # DeepSpeed reads this switch from its config when loading (no other way to set it after
        # initialize); a universal load repartitions every state for this run's ranks.
        self.engine._config.load_universal_checkpoint = universal
        path, _ = self.engine.load_checkpoint(
            directory, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}/{tag}")
