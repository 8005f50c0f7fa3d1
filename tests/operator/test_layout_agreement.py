"""The GPUs the operator's pods request are the GPUs the trainer places, role by role.

Both sides read one layout (rlhf_trainer.api.layout); this test holds them to it over every
example and the edge cases where they once disagreed (a CPU job with a reward model whose gpus is
unset; a reference with kl.coef 0), each colocation mode, multi-node roles and several pod sizes.
CPU roles with several ranks (`cpuRanks`) get one worker pod per rank, and the trainer's bundles
ask for one such pod per rank.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from operator_helpers import EXAMPLES, example_doc, job_from, with_spec

from rlhf_operator.placement import CPU_GROUP, plan_layout
from rlhf_operator.render import GPU_RESOURCE, RenderOptions, render_rayjob
from rlhf_trainer.api.layout import CPU_RANK_RESOURCE
from rlhf_trainer.api.spec import RLHFJobSpec
from rlhf_trainer.backends.placement import PlacementPlan, plan_placement

Doc = dict


def _without_reference(stem: str) -> Doc:
    doc = example_doc(stem)
    del doc["spec"]["models"]["reference"]
    return doc


def _cpu_with_reward_model() -> Doc:
    return with_spec("tiny-grpo-cpu", {"models.reward": [{"model": "/models/rm"}, {"function": "m:f"}]})


def _mixed_cpu_actor_gpu_critic() -> Doc:
    doc = with_spec(
        "ppo-llama3-8b", {"models.actor.gpus": 0, "models.rollout": {"engine": "hf", "engines": 1}}
    )
    doc["spec"]["models"]["reference"]["gpus"] = 0
    return doc


def _cpu_ranks_ppo() -> Doc:
    """PPO on CPU, actor and critic 2 ranks each, a KL term (the default reference rides on the
    actor's ranks) and a reward model on the head."""
    cpu = {"gpus": 0, "zeroStage": 3, "precision": "fp32", "cpuRanks": 2}
    return with_spec(
        "tiny-grpo-cpu",
        {
            "algorithm.name": "ppo",
            "algorithm.kl": {"coef": 0.01},
            "models.actor": {"model": "/m", **cpu},
            "models.critic": {"model": "/m", **cpu},
            "models.reward": [{"model": "/rm"}],
        },
    )


CASES: dict[str, Callable[[], Doc]] = {
    **{f"example-{stem}": (lambda stem=stem: example_doc(stem)) for stem in EXAMPLES},
    "cpu-job-reward-model-gpus-unset": _cpu_with_reward_model,
    "kl-zero-with-reference": lambda: with_spec("rloo-qwen2.5-1.5b", {"algorithm.kl": {"coef": 0.0}}),
    "kl-without-reference-gpu": lambda: _without_reference("grpo-qwen2.5-7b-math"),
    "kl-without-reference-ppo": lambda: _without_reference("ppo-llama3-8b"),
    "kl-without-reference-cpu": lambda: with_spec("tiny-grpo-cpu", {"algorithm.kl": {"coef": 0.01}}),
    "colocate-actor-reference": lambda: with_spec(
        "grpo-qwen2.5-7b-math", {"models.reference.gpus": 4, "models.colocate": {"actorReference": True}}
    ),
    "colocate-critic-reward": lambda: with_spec("ppo-llama3-8b", {"models.colocate": {"criticReward": True}}),
    "colocate-critic-reward-unset-gpus": lambda: with_spec(
        "ppo-llama3-8b",
        {"models.colocate": {"criticReward": True}, "models.reward": [{"model": "/rm"}, {"model": "/rm2"}]},
    ),
    "colocate-all-reward-gpus-unset": lambda: with_spec(
        "reinforce-pp-colocate-all", {"models.reward": [{"model": "/rm"}]}
    ),
    "multi-node-actor": lambda: with_spec(
        "grpo-qwen2.5-7b-math",
        {"models.actor.gpus": 8, "models.actor.nodes": 2, "workers": {"gpusPerPod": 4}},
    ),
    "multi-node-critic": lambda: with_spec(
        "ppo-llama3-8b", {"models.critic.gpus": 16, "models.critic.nodes": 2, "training.trainBatchSize": 128}
    ),
    "hf-engines-on-gpus": lambda: with_spec(
        "rloo-qwen2.5-1.5b", {"models.rollout": {"engine": "hf", "engines": 2}}
    ),
    "vllm-on-cpu": lambda: with_spec("tiny-grpo-cpu", {"models.rollout": {"engine": "vllm", "engines": 2}}),
    "mixed-cpu-actor-gpu-critic": _mixed_cpu_actor_gpu_critic,
    "cpu-ranks-actor": lambda: with_spec("tiny-grpo-cpu", {"models.actor.cpuRanks": 2}),
    "cpu-ranks-ppo": _cpu_ranks_ppo,
    "cpu-ranks-critic-gpu-actor": lambda: with_spec(
        "ppo-llama3-8b", {"models.critic": {"model": "/m", "gpus": 0, "cpuRanks": 4}}
    ),
    **{
        f"gpus-per-pod-{size}-{stem}": (
            lambda stem=stem, size=size: with_spec(stem, {"workers": {"gpusPerPod": size}})
        )
        for size in (1, 2, 4, 8, 16)
        for stem in ("grpo-qwen2.5-7b-math", "rloo-qwen2.5-1.5b", "ppo-llama3-8b")
        if not (size == 1 and stem == "grpo-qwen2.5-7b-math")  # actor 4 on 1-GPU pods: fine, kept below
    },
    "gpus-per-pod-1-grpo": lambda: with_spec("grpo-qwen2.5-7b-math", {"workers": {"gpusPerPod": 1}}),
}


def rendered_groups(spec: RLHFJobSpec) -> list[dict]:
    doc = example_doc("tiny-grpo-cpu")
    job = job_from(doc).model_copy(update={"spec": spec})
    return render_rayjob(job, RenderOptions(default_image="img"))["spec"]["rayClusterSpec"][
        "workerGroupSpecs"
    ]


def pod_gpus(spec: RLHFJobSpec) -> int:
    """GPUs the rendered RayJob's worker pods request."""
    return sum(
        group["replicas"]
        * group["template"]["spec"]["containers"][0]["resources"].get("limits", {}).get(GPU_RESOURCE, 0)
        for group in rendered_groups(spec)
    )


def cpu_rank_pods(spec: RLHFJobSpec) -> int:
    """Worker pods of one CPU rank each in the rendered RayJob."""
    return sum(group["replicas"] for group in rendered_groups(spec) if group["groupName"] == CPU_GROUP)


def disagreements(spec: RLHFJobSpec, placement: Callable[[RLHFJobSpec, float], PlacementPlan]) -> list[str]:
    """Where the pods and the trainer's bundles differ: per role, then in total."""
    layout = plan_layout(spec)
    plan = placement(spec, 16.0)
    pod_pool = {role: pool.gpus for pool in layout.pools for role in pool.roles}
    problems = []
    if set(pod_pool) != set(plan.roles):
        problems.append(f"roles: pods {sorted(pod_pool)} vs trainer {sorted(plan.roles)}")
    for role in sorted(set(pod_pool) & set(plan.roles)):
        placed = sum(plan.bundles[i].get("GPU", 0.0) for i in plan.pool_bundles[role])
        if placed != pod_pool[role]:
            problems.append(f"{role}: pods hold {pod_pool[role]} GPUs for it, the trainer places {placed}")
    requested, placed_total = pod_gpus(spec), sum(b.get("GPU", 0.0) for b in plan.bundles)
    if requested != placed_total or requested != layout.total_gpus:
        problems.append(f"total: pods request {requested}, the trainer places {placed_total}")
    # On the operator's pods each CPU rank asks for a pod of its own (one unit of the resource).
    ranked = plan_placement(spec, 16.0, rank_pods=True)
    rank_bundles = sum(b.get(CPU_RANK_RESOURCE, 0.0) for b in ranked.bundles)
    pods = cpu_rank_pods(spec)
    if rank_bundles != pods or pods != layout.cpu_rank_pods:
        problems.append(
            f"cpu ranks: {pods} rank pods rendered, the trainer places {rank_bundles} ranks on them"
        )
    return problems


def specs_of(doc: dict) -> list[RLHFJobSpec]:
    """The job's spec, or each stage's of a pipeline (stage:// models stand for an exported one)."""
    if doc["kind"] != "RLHFPipeline":
        return [job_from(doc).spec]
    from rlhf_trainer.api.pipeline import resolve_references

    exported = {stage["name"]: "/models/exported" for stage in doc["spec"]["stages"]}
    return [
        job_from({"apiVersion": doc["apiVersion"], "kind": "RLHFJob", "metadata": {"name": stage["name"]},
                  "spec": resolve_references(stage["spec"], exported)}).spec
        for stage in doc["spec"]["stages"]
    ]  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_pods_request_the_gpus_the_trainer_places(case: str) -> None:
    for spec in specs_of(CASES[case]()):
        assert disagreements(spec, plan_placement) == []


def test_the_cases_cover_every_example() -> None:
    assert {f"example-{stem}" for stem in EXAMPLES} <= set(CASES)
    assert len(list(Path(next(iter(EXAMPLES.values()))).parent.glob("*.yaml"))) == len(EXAMPLES)


@pytest.mark.parametrize(
    ("case", "old_rule", "expected"),
    [
        # The trainer's old rule: no reference when kl.coef is 0, while the pods kept one.
        ("kl-zero-with-reference", "pods-keep-unused-reference", "reference"),
        # The operator's old rule: an unset reward-model gpus is 1 even in a CPU job.
        ("cpu-job-reward-model-gpus-unset", "pods-default-reward-gpu", "reward_model_0"),
    ],
)
def test_a_rule_changed_on_one_side_is_caught(case: str, old_rule: str, expected: str, monkeypatch) -> None:
    """The check is not vacuous: each disagreement fixed by the shared layout is found again when
    one side goes back to its own rule."""
    import rlhf_operator.placement as placement
    from rlhf_trainer.api import layout as shared

    spec = job_from(CASES[case]()).spec
    original = shared.plan_roles

    def operator_side(spec: RLHFJobSpec):
        roles = original(spec)
        if old_rule == "pods-keep-unused-reference":
            reference = shared.RoleLayout("reference", 1, 1, 1, None, "spec.models.reference.gpus")
            return shared.JobLayout((*roles.roles, reference))
        changed = [
            shared.RoleLayout(r.name, 1, 1, 1, None, r.field) if r.name.startswith("reward_model_") else r
            for r in roles
        ]
        return shared.JobLayout(tuple(changed))

    monkeypatch.setattr(placement, "plan_roles", operator_side)
    problems = disagreements(spec, plan_placement)
    assert any(problem.startswith((expected, "roles", "total")) for problem in problems), problems


def test_a_kl_job_without_a_reference_renders_pods_that_hold_the_default_reference() -> None:
    job = job_from(CASES["kl-without-reference-gpu"]())
    rayjob = render_rayjob(job, RenderOptions(default_image="img"))
    (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["template"]["metadata"]["annotations"]["rlhf.io/roles"].split(",")[:2] == [
        "actor",
        "reference",
    ]
    assert (
        group["replicas"] * group["template"]["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE]
        == 6
    )
