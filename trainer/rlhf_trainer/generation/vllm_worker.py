"""What the trainer adds to each vLLM worker (`worker_extension_cls`): joining the weight-sync
group and loading the weights streamed over it.

vLLM mixes this class into its Worker, so `self` is the worker: `self.rank` its rank inside the
engine (tensor-parallel rank), `self.model_runner` the model. The engine calls these methods
through `LLM.collective_rpc`, on every worker of the engine at once. The names carry an `rlhf_`
prefix: a method named like one of the Worker's own (`update_weights`) would replace it and break
vLLM's start-up.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .transport import TensorMeta, WeightGroup, receive_all

log = logging.getLogger(__name__)


def repack_kept_cpu_weights(model: torch.nn.Module) -> None:
    """On CPU, vLLM multiplies through a packed copy of each linear weight (oneDNN), made when the
    weights are processed after loading. The layer-wise reload re-processes every layer it loads
    into, but a layer whose weight is another layer's (the LM head tied to the embeddings) is
    never loaded into and keeps multiplying by its old packed copy. Such layers keep their weight
    tensor (the others drop it after packing): re-pack those from the weights now in place."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    for module in model.modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and isinstance(weight, torch.Tensor) and weight.numel() > 0:
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)


class WeightReceiver:
    _rlhf_group: WeightGroup | None = None
    _rlhf_buckets: list[list[TensorMeta]] | None = None

    def rlhf_open_weight_group(
        self,
        host: str,
        port: int,
        first_rank: int,
        world_size: int,
        backend: str,
        buckets: list[list[list[Any]]],
    ) -> None:
        """Join the group as rank `first_rank` + this worker's tensor-parallel rank. `buckets`:
        [[name, shape, dtype], ...] per bucket (plain lists: the call may cross processes)."""
        rank = first_rank + int(self.rank)  # type: ignore[attr-defined]
        self._rlhf_buckets = [
            [TensorMeta(name, tuple(shape), dtype) for name, shape, dtype in b] for b in buckets
        ]
        self._rlhf_group = WeightGroup(host, port, rank, world_size, backend)

    def rlhf_receive_weights(self) -> int:
        """Receive every bucket and load it in place (vLLM's layer-wise reload: each layer is
        re-processed into the kernels' layout once its weights are in). Returns the bytes received."""
        group, buckets = self._rlhf_group, self._rlhf_buckets
        if group is None or buckets is None:
            raise RuntimeError("rlhf_receive_weights before rlhf_open_weight_group")
        received = {"bytes": 0}

        def stream() -> Any:
            for name, tensor in receive_all(group, buckets):
                received["bytes"] += tensor.numel() * tensor.element_size()
                yield name, tensor

        weights = stream()
        try:
            self.model_runner.reload_weights(  # type: ignore[attr-defined]
                weights_iterator=weights, is_checkpoint_format=True
            )
        finally:
            # Whatever the loader left unread must still be received, or the sender would wait
            # on this rank until the group's timeout.
            for _ in weights:
                pass
        repack_kept_cpu_weights(self.model_runner.get_model())  # type: ignore[attr-defined]
        return received["bytes"]

    def rlhf_close_weight_group(self) -> None:
        if self._rlhf_group is not None:
            self._rlhf_group.close()
        self._rlhf_group = None
        self._rlhf_buckets = None
