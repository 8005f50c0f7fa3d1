"""GPU layouts: the roles' GPU counts and colocation packed into worker pods of gpusPerPod GPUs."""

from __future__ import annotations

import pytest
from operator_helpers import example_job, job_from, with_spec

from rlhf_operator.errors import RenderError
from rlhf_operator.placement import Block, pack, plan_layout


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
        ("reward-helpfulness",): 2,
    }
    assert layout.total_gpus == 4 + 4 + 2 + 2 + 4 * 1


def test_actor_reference_colocation_shares_the_actors_gpus():
    doc = with_spec(
        "grpo-qwen2.5-7b-math", {"models.reference.gpus": 4, "models.colocate": {"actorReference": True}}
    )
    # actor+reference 4 + 2 engines = 6 GPUs in one pod
    assert groups(doc) == [("gpu6", 1, 6)]


def test_critic_reward_colocation_shares_one_pool_sized_by_the_larger():
    doc = with_spec("ppo-llama3-8b", {"models.colocate": {"criticReward": True}})
    layout = plan_layout(job_from(doc).spec)
    assert {pool.roles: pool.gpus for pool in layout.pools}[("critic", "reward-helpfulness")] == 4
    # actor 4 + critic/reward 4 + reference 2 + 4 engines = 14 -> 8 + 6
    assert groups(doc) == [("gpu8", 1, 8), ("gpu6", 1, 6)]


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


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"models.actor.gpus": 12}, "spec.models.actor.gpus", "multiple of 8"),
        ({"models.reference.gpus": 10}, "spec.models.reference.gpus", "multiple of 8"),
        (
            {"models.rollout": {"engine": "vllm", "engines": 1, "tensorParallelSize": 16}},
            "spec.models.rollout.tensorParallelSize",
            "must fit in one pod",
        ),
        (
            {"models.actor.gpus": 10, "workers": {"gpusPerPod": 4}},
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


def test_colocate_all_rejects_a_model_with_more_gpus_than_the_actor():
    doc = with_spec(
        "reinforce-pp-colocate-all",
        {"models.reward": [{"model": "/models/rm", "gpus": 16}]},
    )
    with pytest.raises(RenderError, match=r"^spec\.models\.reward\[0\]\.gpus: 16 GPUs, but colocate\.all"):
        plan_layout(job_from(doc).spec)


def test_colocate_all_rejects_tp_groups_that_straddle_the_actors_pods():
    doc = with_spec(
        "reinforce-pp-colocate-all",
        {
            "models.actor.gpus": 12,
            "models.reference.gpus": 12,
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
