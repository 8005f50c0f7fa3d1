"""The reference policy: frozen, scores completions for the KL term."""

from __future__ import annotations

import torch

from ..api.spec import RLHFJobSpec
from ..engine.device import DistributedContext
from ..engine.models import load_causal_lm
from ..packing import enable_packing, packed_policy_forward
from ..rollout_batch import RolloutBatch
from .base import start_role_process
from .forward import per_token_outputs, policy_forward

FIELD = "spec.models.reference"


class ReferenceRole:
    def __init__(self, spec: RLHFJobSpec, dist: DistributedContext) -> None:
        if spec.models.reference is None:
            raise ValueError(f"{FIELD}: required when algorithm.kl.coef > 0")
        self.device = start_role_process(dist, spec.training.seed)
        self.spec = spec
        self.model = load_causal_lm(spec.models.reference, dist.use_gpu, FIELD, trainable=False).to(
            self.device
        )
        packed = spec.training.packing and enable_packing(self.model)
        self.forward = packed_policy_forward if packed else policy_forward

    def ready(self) -> bool:
        return True

    def logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        temperature = self.spec.generation.temperature
        return per_token_outputs(
            lambda micro: self.forward(self.model, micro, temperature, with_entropy=False)[0],
            batch,
            self.spec.training.micro_batch_size,
            self.device,
        )
