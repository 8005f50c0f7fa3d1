"""GPU layouts: the roles' GPU counts and colocation packed into worker pods of gpusPerPod GPUs."""

from __future__ import annotations

import pytest
from operator_helpers import example_doc, example_job, job_from, with_spec

from rlhf_operator.errors import RenderError
from rlhf_operator.placement import MAX_WORKER_PODS, Block, pack, plan_layout
from rlhf_trainer.api.layout import MAX_JOB_GPUS


def groups(stem_or_doc) -> list[tuple[str, int, int]]:
    job = example_job(stem_or_doc) if isinstance(stem_or_doc, str) else job_from(stem_or_doc)
    return [(g.name, g.replicas, g.gpus_per_pod) for g in plan_layout(job.spec).groups]


@pytest.mark.parametrize(
    ("example", "expected", "total"),
    [
        # actor 4 + critic 4 | reference 2 + reward 2 + 4 vllm engines x 1 -> two full 8-GPU pods
        ("ppo-llama3-8b", [("gpu8", 2, 8)], 16),
        # actor 4 + reference 2 + 2 engines x 1 = 8
        ("grpo-qwen2.5-7b-math", [("gpu8", 1, 8)], 8),
        # actor 8 | 4 engines x TP 2 = 8
        ("grpovi-qwen2.5-7b-math", [("gpu8", 2, 8)], 16),
        # colocate.all: everything time-slices the actor's 8 GPUs
        ("reinforce-pp-colocate-all", [("gpu8", 1, 8)], 8),
        # actor 2 + reference 1 + 1 engine = 4 GPUs: one pod of 4, not a half-empty pod of 8
        ("rloo-qwen2.5-1.5b", [("gpu4", 1, 4)], 4),
        # CPU only: no GPU workers, the head runs it
        ("tiny-grpo-cpu", [], 0),
    ],
)
def test_examples_pack_into_the_expected_worker_groups(example, expected, total):
    layout = plan_layout(example_job(example).spec)
    assert [(g.name, g.replicas, g.gpus_per_pod) for g in layout.groups] == expected
    assert layout.total_gpus == total


def test_total_gpus_equal_the_sum_of_the_roles_without_colocation():
    layout = plan_layout(example_job("ppo-llama3-8b").spec)
    assert {pool.roles: pool.gpus for pool in layout.pools} == {
        ("actor",): 4,
        ("critic",): 4,
        ("reference",): 2,
        ("reward_model_0",): 2,
        ("rollout",): 4,
    }
    assert layout.total_gpus == 4 + 4 + 2 + 2 + 4 * 1


def test_actor_reference_colocation_shares_the_actors_gpus():
    doc = with_spec(
        "grpo-qwen2.5-7b-math", {"models.reference.gpus": 4, "models.colocate": {"actorReference": True}}
    )
    # actor+reference 4 + 2 engines = 6 GPUs in one pod
    assert groups(doc) == [("gpu6", 1, 6)]


def test_critic_reward_colocation_puts_the_reward_models_on_the_critics_gpus():
    doc = with_spec("ppo-llama3-8b", {"models.colocate": {"criticReward": True}})
    layout = plan_layout(job_from(doc).spec)
    assert {pool.roles: pool.gpus for pool in layout.pools}[("critic", "reward_model_0")] == 4
    # actor 4 + critic/reward 4 + reference 2 + 4 engines = 14 -> 8 + 6
    assert groups(doc) == [("gpu8", 1, 8), ("gpu6", 1, 6)]


def test_a_reference_without_a_kl_term_gets_no_gpus():
    doc = with_spec("rloo-qwen2.5-1.5b", {"algorithm.kl": {"coef": 0.0}})
    assert groups(doc) == [("gpu3", 1, 3)]  # actor 2 + 1 engine; the reference is not loaded


def test_a_kl_term_without_a_reference_puts_the_default_reference_on_the_actors_gpus():
    doc = example_doc("rloo-qwen2.5-1.5b")
    del doc["spec"]["models"]["reference"]
    layout = plan_layout(job_from(doc).spec)
    assert ("actor", "reference") in [pool.roles for pool in layout.pools]
    assert groups(doc) == [("gpu3", 1, 3)]


def test_a_cpu_job_asks_for_no_gpu_for_a_reward_model_with_unset_gpus():
    doc = with_spec("tiny-grpo-cpu", {"models.reward": [{"model": "/models/rm"}]})
    assert groups(doc) == []


def test_a_role_larger_than_a_pod_takes_whole_pods():
    doc = with_spec("grpovi-qwen2.5-7b-math", {"models.actor.gpus": 16})
    assert groups(doc) == [("gpu8", 3, 8)]  # actor 16 = 2 pods, 4 engines x TP 2 = 1 pod


def test_a_role_spread_over_nodes_gives_one_block_per_node():
    doc = with_spec(
        "grpo-qwen2.5-7b-math",
        {"models.actor.gpus": 8, "models.actor.nodes": 2, "workers": {"gpusPerPod": 4}},
    )
    # actor 4+4, reference 2 + engines 1+1 -> three pods of 4
    assert groups(doc) == [("gpu4", 3, 4)]


def test_hf_engines_take_one_gpu_each_when_the_actor_has_gpus():
    doc = with_spec("rloo-qwen2.5-1.5b", {"models.rollout": {"engine": "hf", "engines": 2}})
    assert groups(doc) == [("gpu5", 1, 5)]  # actor 2 + reference 1 + 2 hf engines


BATCHES_FOR_12 = {"training.rolloutBatchSize": 96, "training.trainBatchSize": 96}


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"models.actor.gpus": 12, **BATCHES_FOR_12}, "spec.models.actor.gpus", "multiple of 8"),
        ({"models.reference.gpus": 10}, "spec.models.reference.gpus", "multiple of 8"),
        (
            {"models.rollout": {"engine": "vllm", "engines": 1, "tensorParallelSize": 16}},
            "spec.models.rollout.tensorParallelSize",
            "must fit in one pod",
        ),
        (
            {"models.actor.gpus": 6, "workers": {"gpusPerPod": 4}, **BATCHES_FOR_12},
            "spec.models.actor.gpus",
            "multiple of 4",
        ),
        (
            {
                "models.actor.gpus": 8,
                "models.actor.nodes": 1,
                "models.reference.gpus": 2,
                "workers": {"gpusPerPod": 2},
                "models.rollout": {"engine": "vllm", "engines": 1, "tensorParallelSize": 4},
            },
            "spec.models.rollout.tensorParallelSize",
            "must fit in one pod",
        ),
    ],
)
def test_unplaceable_layouts_are_rejected_naming_the_field(changes, field, words):
    with pytest.raises(RenderError) as info:
        plan_layout(job_from(with_spec("grpo-qwen2.5-7b-math", changes)).spec)
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")
    assert words in str(info.value)


def test_a_role_per_node_share_larger_than_a_pod_is_rejected():
    doc = with_spec(
        "grpo-qwen2.5-7b-math",
        {"models.actor.gpus": 16, "models.actor.nodes": 2, "workers": {"gpusPerPod": 4}},
    )
    with pytest.raises(RenderError, match=r"^spec\.models\.actor\.gpus: 16 GPUs over 2 nodes is 8 per node"):
        plan_layout(job_from(doc).spec)


def test_colocate_all_rejects_tp_groups_that_straddle_the_actors_pods():
    doc = with_spec(
        "reinforce-pp-colocate-all",
        {
            "models.actor.gpus": 12,
            "models.reference.gpus": 12,
            **BATCHES_FOR_12,
            "models.reward": [{"function": "m:f"}],
            "models.rollout": {"engine": "vllm", "engines": 3, "tensorParallelSize": 4},
            "workers": {"gpusPerPod": 6},
        },
    )
    with pytest.raises(RenderError, match=r"^spec\.models\.rollout\.tensorParallelSize: 4 does not divide"):
        plan_layout(job_from(doc).spec)


def test_first_fit_decreasing_fills_pods_before_opening_new_ones():
    blocks = [Block(("a",), 2), Block(("b",), 6), Block(("c",), 4), Block(("d",), 4), Block(("e",), 1)]
    pods = pack(blocks, 8)
    assert [[b.roles[0] for b in pod] for pod in pods] == [["b", "a"], ["c", "d"], ["e"]]


def test_first_fit_keeps_a_pod_of_room_for_a_tensor_parallel_group():
    # 3 engines of TP 4 and 4 single GPUs on pods of 8: 4+4 | 4+1+1+1+1
    blocks = [(Block(("rollout",), 4), 3), (Block(("actor",), 1), 4)]
    assert sorted(sum(b.gpus for b in pod) for pod in pack(blocks, 8)) == [8, 8]


def test_a_short_manifest_asking_for_too_many_gpus_is_rejected_at_once():
    """Issue 19: 16 reward models x 4096 GPUs on 1-GPU pods once cost 85 s and 78,848 replicas."""
    import time

    reward = [{"name": f"rm{i}", "model": "/models/rm", "gpus": 4096} for i in range(16)]
    doc = with_spec(
        "ppo-llama3-8b",
        {
            "models.reward": reward,
            "workers": {"gpusPerPod": 1},
            "models.actor.gpus": 4096,
            "models.actor.nodes": 512,
        },
    )
    doc["spec"]["training"].update(rolloutBatchSize=4096, trainBatchSize=16384, microBatchSize=1)
    doc["spec"]["algorithm"]["samplesPerPrompt"] = 4
    doc["spec"]["models"]["critic"].update(gpus=4096, nodes=512)
    job = job_from(doc)
    started = time.process_time()
    with pytest.raises(RenderError, match=rf"in total, more than the {MAX_JOB_GPUS} a job may use"):
        plan_layout(job.spec)
    assert time.process_time() - started < 1.0


def test_the_largest_job_packs_quickly_and_tiny_pods_are_capped():
    import time

    doc = with_spec("grpovi-qwen2.5-7b-math", {"models.actor.gpus": 4000, "models.actor.nodes": 500})
    doc["spec"]["training"].update(rolloutBatchSize=1000, trainBatchSize=8000, microBatchSize=2)
    spec = job_from(doc).spec
    started = time.process_time()
    layout = plan_layout(spec)  # 4000 + 4 x 2 GPUs on pods of 8
    assert layout.total_gpus == 4008 and time.process_time() - started < 1.0
    actor = spec.models.actor.model_copy(update={"nodes": 1})
    tiny = spec.model_copy(
        update={
            "workers": spec.workers.model_copy(update={"gpus_per_pod": 2}),
            "models": spec.models.model_copy(update={"actor": actor}),
        }
    )
    started = time.process_time()
    with pytest.raises(RenderError, match=rf"^spec\.workers\.gpusPerPod: .* more than the {MAX_WORKER_PODS}"):
        plan_layout(tiny)
    assert time.process_time() - started < 1.0
