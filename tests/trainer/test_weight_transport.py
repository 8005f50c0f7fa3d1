"""The weight-sync transport without vLLM: bucket planning, and a real gloo group (a sender and two
receivers in threads) that moves every tensor bit for bit."""

from __future__ import annotations

import threading

import torch

from rlhf_trainer.engine.device import free_port
from rlhf_trainer.generation.transport import (
    TensorMeta,
    WeightGroup,
    plan_buckets,
    receive_all,
    send_bucket,
    tensor_meta,
)


def test_buckets_keep_order_split_on_size_and_dtype() -> None:
    metas = [
        TensorMeta("a", (10,), "float32"),  # 40 bytes
        TensorMeta("b", (5,), "float32"),  # 20
        TensorMeta("c", (4,), "bfloat16"),  # 8: another dtype starts a bucket
        TensorMeta("d", (30,), "bfloat16"),  # 60: 68 > 64 starts another
        TensorMeta("e", (100,), "bfloat16"),  # 200: larger than a bucket, alone
        TensorMeta("f", (1,), "bfloat16"),
    ]
    buckets = plan_buckets(metas, bucket_bytes=64)
    assert [[m.name for m in b] for b in buckets] == [["a", "b"], ["c"], ["d"], ["e"], ["f"]]
    assert tensor_meta("w", torch.zeros(3, 4, dtype=torch.bfloat16)) == TensorMeta("w", (3, 4), "bfloat16")
    assert tensor_meta("z3", torch.zeros(0), shape=(2, 5)).shape == (2, 5)  # a ZeRO-3 partition


def test_a_gloo_group_moves_every_tensor_exactly() -> None:
    torch.manual_seed(0)
    weights = {
        "embed": torch.randn(7, 4),
        "layer.weight": torch.randn(4, 4),
        "layer.bias": torch.randn(4),
        "norm": torch.randn(4).to(torch.bfloat16),
    }
    buckets = plan_buckets([tensor_meta(n, t) for n, t in weights.items()], bucket_bytes=80)
    assert len(buckets) > 2
    port = free_port()
    received: dict[int, dict[str, torch.Tensor]] = {}
    errors: list[BaseException] = []

    def receiver(rank: int) -> None:
        try:
            group = WeightGroup("127.0.0.1", port, rank, 3, "gloo", timeout_s=60)
            received[rank] = {name: t.clone() for name, t in receive_all(group, buckets)}
            group.close()
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=receiver, args=(rank,)) for rank in (1, 2)]
    for thread in threads:
        thread.start()
    sender = WeightGroup("127.0.0.1", port, 0, 3, "gloo", timeout_s=60)
    sent = sum(send_bucket(sender, bucket, [weights[m.name] for m in bucket]) for bucket in buckets)
    for thread in threads:
        thread.join(timeout=60)
    sender.close()
    assert not errors, errors
    assert sent == sum(t.numel() * t.element_size() for t in weights.values())
    for rank in (1, 2):
        assert list(received[rank]) == list(weights)
        for name, tensor in weights.items():
            assert received[rank][name].dtype == tensor.dtype
            assert torch.equal(received[rank][name], tensor), (rank, name)
