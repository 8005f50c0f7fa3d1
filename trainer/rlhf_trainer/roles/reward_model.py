"""A reward-model role: hosts one RewardModelScorer so a Ray job can place it on its own GPUs;
the driver's RewardSet calls `score` through the backend."""

from __future__ import annotations

from ..api.spec import RewardSource
from ..engine.device import DistributedContext, device_for, prepare_environment


class RewardModelRole:
    def __init__(self, source: RewardSource, dist: DistributedContext, field: str) -> None:
        prepare_environment(dist.use_gpu)
        import torch

        from ..rewards.model import RewardModelScorer

        if dist.num_threads > 0 and not dist.use_gpu:
            torch.set_num_threads(dist.num_threads)
        assert source.model is not None, field
        # Unset precision: bf16 on a GPU; CPU kernels run fp32.
        precision = (source.precision or "bf16") if dist.use_gpu else "fp32"
        self.scorer = RewardModelScorer(
            source.model, precision=precision, device=str(device_for(dist.use_gpu))
        )

    def ready(self) -> bool:
        return True

    def score(self, texts: list[str]) -> list[float]:
        return self.scorer.score(texts)
