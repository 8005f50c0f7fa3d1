"""Several DeepSpeed ranks per role on CPU (gloo, `cpuRanks`), on real Ray.

One optimizer step on the same 8 samples (4 micro batches of 2: gradient accumulation over 4 on
one rank, over 2 on each of two) leaves the same parameters on 1 rank and on 2 ranks with ZeRO 0,
1 (optimizer offload), 2, 3 and 3 with optimizer offload, within TOLERANCE: 1% of Adam's first step, which moves every parameter by about the
learning rate (1e-2). Measured in fp32: ZeRO 0 and 2 agree within 1e-5; ZeRO-3 reduces gradients
in another order, and Adam's g / (|g| + eps) turns that rounding in near-zero gradients into
differences of up to 3e-5. The 2-rank ZeRO-3 actor's HF export holds
exactly its gathered parameters and loads with from_pretrained. A 2-rank ZeRO-3 run that crashes
and resumes ends bit-identical to an uninterrupted one, and its checkpoint resumes on one rank
through DeepSpeed's universal checkpoint with the same weights and schedule (and the 1-rank
checkpoint that resume writes resumes on 2 ranks again). A PPO job with a
2-rank actor and a 2-rank critic learns the demo task; an SFT stage runs on 2 ZeRO-3 ranks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from .helpers import checkpoint_dir, checkpoint_steps, hf_weights, manifest, metrics, run

pytestmark = pytest.mark.slow

TOLERANCE = 1e-4
LEARNING_RATE = 1e-2


def step_job(demo_assets: dict, zero_stage: int, ranks: int, offload: bool = False) -> dict:
    actor = {"zeroStage": zero_stage, "cpuRanks": ranks, "offload": {"optimizer": offload}}
    return manifest(
        demo_assets["model"],
        demo_assets["prompts"],
        "grpo",
        {
            "models": {"actor": actor},
            "training": {
                "rolloutBatchSize": 4,
                "trainBatchSize": 8,
                "microBatchSize": 2,
                "actorLearningRate": LEARNING_RATE,
                "lrSchedule": "constant",
            },
        },
    )


def fixed_batch(vocab: int) -> object:
    """8 samples: prompts of 4 tokens (some left padding), completions of up to 4 (some ending
    early), random advantages; the same on every run."""
    from rlhf_trainer.rollout_batch import RolloutBatch

    generator = torch.Generator().manual_seed(11)
    ids = torch.randint(3, vocab, (8, 8), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    mask[2, 6:] = 0  # a completion that ended early
    mask[5, 7:] = 0
    advantages = torch.randn(8, 4, generator=generator) * mask[:, 4:]
    return RolloutBatch(ids, mask, prompt_width=4, advantages=advantages)


def train_one_step(doc: dict, export_to: Path | None = None) -> dict[str, torch.Tensor]:
    """Start the actor's ranks on Ray, train each on its shard of the fixed batch, return the full
    weights (gathered on rank 0) and optionally export the HF model."""
    from transformers import AutoConfig

    from rlhf_trainer.api.validation import validate_manifest
    from rlhf_trainer.backends.placement import plan_placement
    from rlhf_trainer.backends.ray_backend import RayBackend, cluster_cpus
    from rlhf_trainer.preflight import absolute_paths
    from rlhf_trainer.role_groups import start_roles
    from rlhf_trainer.rollout_batch import select_rows, shard_rows

    job, errors = validate_manifest(doc)
    assert not errors, errors
    spec = absolute_paths(job.spec)
    plan = plan_placement(spec, cpus=cluster_cpus())
    backend = RayBackend(plan)
    try:
        roles = start_roles(spec, backend, plan, num_threads=1)
        actor = roles.actor
        batch = fixed_batch(vocab=AutoConfig.from_pretrained(spec.models.actor.model).vocab_size)
        shards = [
            (select_rows(batch, shard_rows(batch.size, 8, rank, actor.size)),) for rank in range(actor.size)
        ]
        backend.get(actor.call_each("train", shards))
        weights = actor.first("weights", to_cpu=True)
        if export_to is not None:
            backend.get(actor.call("export_hf", str(export_to)))
        return weights
    finally:
        backend.shutdown()


class Runs:
    """Each configuration trained once, on first use."""

    def __init__(self, demo_assets: dict, root: Path) -> None:
        self.demo_assets, self.root = demo_assets, root
        self.cache: dict[tuple[int, int, bool], dict[str, torch.Tensor]] = {}

    def weights(self, zero_stage: int, ranks: int, offload: bool = False) -> dict[str, torch.Tensor]:
        key = (zero_stage, ranks, offload)
        if key not in self.cache:
            doc = step_job(self.demo_assets, zero_stage, ranks, offload)
            self.cache[key] = train_one_step(doc, self.hf_dir(zero_stage, ranks) if not offload else None)
        return self.cache[key]

    def hf_dir(self, zero_stage: int, ranks: int) -> Path:
        return self.root / f"hf-zero{zero_stage}-ranks{ranks}"


@pytest.fixture(scope="module")
def runs(demo_assets: dict, ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    yield Runs(demo_assets, tmp_path_factory.mktemp("multi-rank"))


@pytest.mark.parametrize(
    ("zero_stage", "offload"), [(0, False), (1, True), (2, False), (3, False), (3, True)]
)
def test_two_ranks_take_the_same_step_as_one(
    runs: Runs, zero_stage: int, offload: bool, demo_assets: dict
) -> None:
    one = runs.weights(0, 1)
    two = runs.weights(zero_stage, 2, offload)
    assert one.keys() == two.keys()
    initial = hf_weights(demo_assets["model"])
    moved = max((one[name] - initial[name]).abs().max().item() for name in initial)
    assert moved > LEARNING_RATE / 2, "the step must move the parameters for the check to mean anything"
    differing = {
        name: diff
        for name in one
        for diff in [(one[name] - two[name]).abs().max().item()]
        if diff > TOLERANCE
    }
    assert not differing, f"2 ranks with ZeRO-{zero_stage} differ from 1 rank: {differing}"


def test_zero3_hf_export_holds_the_gathered_parameters(runs: Runs) -> None:
    from transformers import AutoModelForCausalLM

    gathered = runs.weights(3, 2)
    exported = hf_weights(runs.hf_dir(3, 2))
    assert exported.keys() <= gathered.keys()
    assert all(torch.equal(exported[name], gathered[name]) for name in exported)
    model = AutoModelForCausalLM.from_pretrained(runs.hf_dir(3, 2))
    assert sum(p.numel() for p in model.parameters()) > 0


# ------------------------------------------------------------------------ crash and resume


def resumable(demo_assets: dict, checkpoints: Path) -> dict:
    """2 ranks, ZeRO-3 (weights and Adam moments partitioned by rank), 2 optimizer steps per
    rollout, cosine schedule, checkpoints at steps 2 and 3."""
    return manifest(
        demo_assets["model"],
        demo_assets["prompts"],
        "grpo",
        {
            "models": {
                "actor": {"zeroStage": 3, "cpuRanks": 2},
                "reward": [{"function": "tiny_rewards:crash_after"}],
            },
            "training": {
                "maxSteps": 3,
                "rolloutBatchSize": 4,
                "trainBatchSize": 4,
                "microBatchSize": 1,
                "lrSchedule": "cosine",
                "warmupRatio": 0.25,
            },
            "checkpoint": {"path": str(checkpoints), "everySteps": 2, "keep": 3, "resume": "auto"},
        },
    )


def test_two_rank_resume_after_a_crash_reproduces_the_uninterrupted_run(
    demo_assets: dict, tiny_rewards: str, ray_cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tiny_rewards as rewards_module

    full = tmp_path / "full"
    assert run(resumable(demo_assets, full / "ckpt"), full / "out", backend="ray") == 0

    doc = resumable(demo_assets, tmp_path / "ckpt")
    rewards_module.CALLS["n"] = 0
    monkeypatch.setenv("TINY_REWARD_CRASH_AT", "3")  # the reward of step 3 raises
    assert run(doc, tmp_path / "out", backend="ray") == 1
    assert checkpoint_steps(tmp_path / "ckpt") == [2]
    written = os.listdir(checkpoint_dir(tmp_path / "ckpt", 2) / "actor")
    assert {"rng_rank0.pt", "rng_rank1.pt", "ranks.json"} <= set(written)
    monkeypatch.delenv("TINY_REWARD_CRASH_AT")
    assert run(doc, tmp_path / "out", backend="ray") == 0  # resume: auto picks step 2

    expected = hf_weights(checkpoint_dir(full / "ckpt", 3) / "hf")
    resumed = hf_weights(checkpoint_dir(tmp_path / "ckpt", 3) / "hf")
    differing = [name for name in expected if not torch.equal(expected[name], resumed[name])]
    assert not differing, f"resumed weights differ: {differing}"
    assert [r["reward/mean"] for r in metrics(tmp_path / "out")] == [
        r["reward/mean"] for r in metrics(full / "out")
    ]
    assert [r["step"] for r in metrics(tmp_path / "out")] == [1, 2, 3]

    # The same checkpoint on one rank: DeepSpeed's universal form repartitions the ZeRO-3 states.
    step2 = checkpoint_dir(tmp_path / "ckpt", 2)
    one_rank = resumable(demo_assets, tmp_path / "one-rank")
    one_rank["spec"]["models"]["actor"]["cpuRanks"] = 1
    one_rank["spec"]["checkpoint"]["resume"] = str(step2)
    assert run(one_rank, tmp_path / "one-rank-out", backend="local") == 0
    assert [r["step"] for r in metrics(tmp_path / "one-rank-out")] == [3]
    assert (step2 / "actor" / "engine_universal" / "CONVERTED").is_file()
    check_universal_load(demo_assets, step2)

    # And back: the 1-rank checkpoint of step 3 resumes on 2 ranks for a fourth step.
    two_ranks = resumable(demo_assets, tmp_path / "two-ranks")
    two_ranks["spec"]["training"]["maxSteps"] = 4
    two_ranks["spec"]["checkpoint"]["resume"] = str(checkpoint_dir(tmp_path / "one-rank", 3))
    assert run(two_ranks, tmp_path / "two-ranks-out", backend="ray") == 0
    assert [r["step"] for r in metrics(tmp_path / "two-ranks-out")] == [4]


def check_universal_load(demo_assets: dict, checkpoint: Path) -> None:
    """One rank reads a 2-rank ZeRO-3 checkpoint: its weights are the checkpoint's HF export and its
    schedule stands where the run left it (2 steps x 2 optimizer steps)."""
    from rlhf_trainer.api.validation import validate_manifest
    from rlhf_trainer.checkpoint_ranks import needs_universal
    from rlhf_trainer.engine.device import DistributedContext
    from rlhf_trainer.preflight import absolute_paths
    from rlhf_trainer.roles.actor import ActorRole

    job, errors = validate_manifest(resumable(demo_assets, checkpoint.parent))
    assert not errors, errors
    spec = absolute_paths(job.spec)
    actor = ActorRole(spec.model_copy(deep=True), DistributedContext(), generates=False)
    assert needs_universal(str(checkpoint), "actor", 1)
    actor.load_checkpoint(str(checkpoint / "actor"), universal=True)
    weights = actor.weights(to_cpu=True)
    exported = hf_weights(checkpoint / "hf")
    assert all(torch.equal(weights[name], exported[name]) for name in exported)
    assert actor.engine.scheduler.last_epoch == 4


# ------------------------------------------------------------------------ learning

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny-grpo-cpu.yaml"
STEPS = 60


def test_ppo_with_two_rank_actor_and_critic_learns_the_demo_task(
    demo_assets: dict, ray_cluster: None, tmp_path: Path
) -> None:
    """The demo task (examples/tiny-grpo-cpu.yaml) with PPO: actor on 2 ZeRO-3 ranks (it generates,
    with synced forward passes), critic on 2 ZeRO-2 ranks. Measured: the mean reward of the first 5
    steps is 0.03, of the last 5 of 40 steps 0.22, of 60 steps 0.34; asserted: a rise of at least 0.2."""
    import yaml

    from rlhf_trainer.checkpoint_ranks import written_ranks

    doc = yaml.safe_load(EXAMPLE.read_text())
    spec = doc["spec"]
    cpu = {"model": demo_assets["model"], "gpus": 0, "precision": "fp32", "cpuRanks": 2}
    spec["algorithm"] = {"name": "ppo", "samplesPerPrompt": 4, "kl": {"coef": 0.0}}
    spec["models"].update(
        actor={**cpu, "zeroStage": 3},
        critic={**cpu, "zeroStage": 2},
        rollout={"engine": "hf", "engines": 0},
    )
    spec["data"]["prompts"]["path"] = demo_assets["prompts"]
    spec["training"].update(
        rolloutBatchSize=32,
        trainBatchSize=128,
        microBatchSize=32,
        maxSteps=STEPS,
        criticLearningRate=1e-2,
        evalEverySteps=STEPS,
    )
    # One evaluation prompt: one rank generates nothing but joins the other's synced passes.
    spec["data"]["eval"] = {**spec["data"]["prompts"], "maxSamples": 1}
    spec["checkpoint"] = {"path": str(tmp_path / "ckpt"), "everySteps": STEPS, "resume": "never"}
    assert run(doc, tmp_path / "out", backend="ray") == 0
    rows = metrics(tmp_path / "out")
    rewards = [row["reward/mean"] for row in rows]
    assert len(rewards) == STEPS
    assert 0.0 <= rows[-1]["eval/reward/mean"] <= 1.0
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last >= first + 0.2, f"reward did not rise: first 5 {first:.3f}, last 5 {last:.3f}"
    assert all(row["critic/vf_loss"] == row["critic/vf_loss"] for row in rows)  # finite, not NaN
    # Both roles' ranks wrote their own states (ZeRO partitions and RNG), rank 0 the rank record.
    for role, stage in (("actor", 3), ("critic", 2)):
        directory = checkpoint_dir(tmp_path / "ckpt", STEPS) / role
        assert written_ranks(str(directory)) == (2, stage)
        files = set(os.listdir(directory / "engine")) | set(os.listdir(directory))
        assert {"rng_rank0.pt", "rng_rank1.pt"} <= files
        assert {f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in (0, 1)} <= files
    check_critic_on_one_rank(spec, checkpoint_dir(tmp_path / "ckpt", STEPS))


def check_critic_on_one_rank(spec_doc: dict, checkpoint: Path) -> None:
    """The 2-rank ZeRO-2 critic read back by one rank through the universal form holds the weights
    DeepSpeed's own zero_to_fp32 assembles from the two partitions."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from rlhf_trainer.api.validation import validate_manifest
    from rlhf_trainer.checkpoint_ranks import needs_universal
    from rlhf_trainer.engine.device import DistributedContext
    from rlhf_trainer.roles.critic import CriticRole

    doc = {"apiVersion": "rlhf.io/v1alpha1", "kind": "RLHFJob", "metadata": {"name": "c"}, "spec": spec_doc}
    job, errors = validate_manifest(doc)
    assert not errors, errors
    critic = CriticRole(job.spec, DistributedContext())
    assert needs_universal(str(checkpoint), "critic", 1)
    critic.load_checkpoint(str(checkpoint / "critic"), universal=True)
    loaded = critic.engine.full_state_dict(to_cpu=True)
    expected = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint / "critic"), tag="engine")
    assert expected.keys() <= loaded.keys()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)


def test_an_sft_stage_on_two_zero3_ranks_evaluates_uneven_shares(
    demo_assets: dict, ray_cluster: None, tmp_path: Path
) -> None:
    """An offline stage on 2 ZeRO-3 ranks: 3 held-out examples in micro batches of 1 give one rank
    2 evaluation passes and the other 1 (it runs a second on a stand-in, so both make the same
    gathers); training goes on after each evaluation and both ranks write the checkpoint."""
    from rlhf_trainer.demo.stages import build_stage_data

    from .stage_helpers import stage_manifest

    data = build_stage_data(str(tmp_path / "stage-data"))
    doc = stage_manifest(
        "sft",
        demo_assets["model"],
        data,
        {
            "models": {"actor": {"zeroStage": 3, "cpuRanks": 2}},
            "data": {"eval": {"maxSamples": 3}},
            "training": {"trainBatchSize": 4, "microBatchSize": 1, "maxSteps": 2, "evalEverySteps": 1},
        },
    )
    doc["spec"]["checkpoint"] = {"path": str(tmp_path / "ckpt"), "everySteps": 2, "resume": "never"}
    assert run(doc, tmp_path / "out", backend="ray") == 0
    rows = metrics(tmp_path / "out")
    assert [r["step"] for r in rows] == [1, 2] and all("eval/sft/loss" in r for r in rows)
    from rlhf_trainer.checkpoint_ranks import written_ranks

    assert written_ranks(str(checkpoint_dir(tmp_path / "ckpt", 2) / "actor")) == (2, 3)
