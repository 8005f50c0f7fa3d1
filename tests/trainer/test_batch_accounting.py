"""Batch accounting, learning-rate schedule, DeepSpeed config and placement, with exact numbers."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_trainer.api.spec import RLHFJobSpec
from rlhf_trainer.backends.placement import WorkerPlacement, plan_placement
from rlhf_trainer.batch_plan import BatchConfigError, plan_batches
from rlhf_trainer.engine.config import deepspeed_config, lr_multiplier
from rlhf_trainer.rollout_batch import RolloutBatch, even_ranges, shard_rows

from .helpers import manifest


def spec(**overrides) -> RLHFJobSpec:
    wire = manifest("/m", "/p.jsonl", overrides=overrides)["spec"]
    return RLHFJobSpec.model_validate(wire)


def test_batch_plan_counts_optimizer_steps_and_accumulation() -> None:
    s = spec(
        algorithm={"samplesPerPrompt": 8, "epochs": 2},
        training={"rolloutBatchSize": 16, "trainBatchSize": 32, "microBatchSize": 4, "maxSteps": 10},
    )
    plan = plan_batches(s, data_parallel=2)
    assert plan.samples_per_step == 128  # 16 prompts x 8 samples
    assert plan.optimizer_steps_per_epoch == 4  # 128 / 32
    assert plan.optimizer_steps_per_step == 8  # x 2 epochs
    assert plan.gradient_accumulation == 4  # 32 / (4 micro x 2 workers)
    assert plan.micro_batches_per_step == 32  # per worker: 8 steps x 4 micro batches
    assert plan.total_optimizer_steps == 80  # 8 x 10 RL steps
    assert not plan.single_update


def test_one_train_batch_per_rollout_is_a_single_update() -> None:
    s = spec(training={"rolloutBatchSize": 2, "trainBatchSize": 4, "microBatchSize": 2, "maxSteps": 3})
    plan = plan_batches(s)
    assert (plan.optimizer_steps_per_step, plan.gradient_accumulation, plan.single_update) == (1, 2, True)


def test_micro_batch_times_workers_must_divide_the_train_batch() -> None:
    s = spec(training={"rolloutBatchSize": 4, "trainBatchSize": 4, "microBatchSize": 2})
    with pytest.raises(BatchConfigError, match=r"spec\.training\.microBatchSize: .* 2 x 4 = 8 must divide"):
        plan_batches(s, data_parallel=4)


def test_shards_split_every_train_batch_over_the_workers() -> None:
    # 8 samples, train batches of 4, 2 workers: each worker takes 2 of every train batch.
    assert shard_rows(8, 4, rank=0, world_size=2).tolist() == [0, 1, 4, 5]
    assert shard_rows(8, 4, rank=1, world_size=2).tolist() == [2, 3, 6, 7]
    assert even_ranges(10, 3) == [(0, 3), (3, 7), (7, 10)]


def test_learning_rate_warmup_then_cosine_to_the_floor() -> None:
    s = spec(training={"lrSchedule": "cosine", "warmupRatio": 0.2, "minLrRatio": 0.1})
    t = s.training
    assert [lr_multiplier(i, 10, t) for i in range(2)] == [0.5, 1.0]  # 2 warmup steps
    assert lr_multiplier(2, 10, t) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_multiplier(6, 10, t) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_multiplier(10, 10, t) == pytest.approx(0.1)
    constant = spec(training={"lrSchedule": "constant"}).training
    assert {lr_multiplier(i, 10, constant) for i in range(10)} == {1.0}


def test_deepspeed_config_follows_the_role_and_training_spec() -> None:
    s = spec(
        models={"actor": {"zeroStage": 2, "precision": "bf16", "offload": {"optimizer": True}}},
        training={"rolloutBatchSize": 4, "trainBatchSize": 8, "microBatchSize": 2, "maxGradNorm": 0.5},
    )
    plan = plan_batches(s, data_parallel=2)
    gpu = deepspeed_config(s.models.actor, s.training, plan, use_gpu=True)
    assert (
        gpu["train_batch_size"],
        gpu["train_micro_batch_size_per_gpu"],
        gpu["gradient_accumulation_steps"],
    ) == (8, 2, 2)
    assert gpu["gradient_clipping"] == 0.5
    assert gpu["zero_optimization"]["stage"] == 2
    assert gpu["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert gpu["bf16"]["enabled"] is True
    cpu = deepspeed_config(s.models.actor, s.training, plan, use_gpu=False)
    assert cpu["bf16"]["enabled"] is False
    # CPU ranks run the offload path too, with torch's AdamW and unpinned host memory.
    assert cpu["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert cpu["zero_force_ds_cpu_optimizer"] is False and gpu["zero_force_ds_cpu_optimizer"] is True


def test_rows_trim_padding_columns_of_a_micro_batch() -> None:
    # P = 3 (left-padded prompts), R = 3 (right-padded completions).
    ids = torch.tensor([[0, 0, 5, 6, 7, 0], [0, 4, 5, 6, 0, 0], [3, 4, 5, 6, 7, 8]])
    mask = (ids != 0).long()
    batch = RolloutBatch(ids, mask, prompt_width=3, advantages=torch.arange(9.0).view(3, 3))
    micro = batch.rows(0, 2)
    assert micro.prompt_width == 2 and micro.response_width == 2
    assert micro.input_ids.tolist() == [[0, 5, 6, 7], [4, 5, 6, 0]]
    assert micro.advantages.tolist() == [[0.0, 1.0], [3.0, 4.0]]


def test_placement_colocates_actor_and_reference_on_shared_gpus() -> None:
    s = spec(
        algorithm={"kl": {"coef": 0.01}},
        models={
            "actor": {"gpus": 2},
            "reference": {"model": "/m", "gpus": 2},
            "colocate": {"actorReference": True},
            "rollout": {"engine": "hf", "engines": 1},
        },
    )
    plan = plan_placement(s, cpus=8)
    assert plan.bundles == ({"GPU": 1.0, "CPU": 1.0}, {"GPU": 1.0, "CPU": 1.0}, {"GPU": 1.0, "CPU": 1.0})
    assert plan.roles["actor"] == (WorkerPlacement(0, 0.5, 0.5), WorkerPlacement(1, 0.5, 0.5))
    assert plan.roles["reference"] == (WorkerPlacement(0, 0.5, 0.5), WorkerPlacement(1, 0.5, 0.5))
    assert plan.roles["rollout"] == (WorkerPlacement(2, 1.0, 1.0),)


def test_placement_of_a_cpu_job_fits_the_cpus_ray_has() -> None:
    s = spec(
        algorithm={"name": "ppo"},
        models={
            "critic": {"model": "/m", "gpus": 0},
            "rollout": {"engine": "hf", "engines": 1},
            "reward": [{"model": "/rm"}, {"function": "tiny_rewards:varied"}],
        },
    )
    plan = plan_placement(s, cpus=2)
    # actor, critic, rollout, reward model 0: four CPU bundles of half a CPU, no GPU anywhere.
    assert plan.bundles == ({"CPU": 0.5},) * 4
    assert not plan.uses_gpus
    assert sorted(plan.roles) == ["actor", "critic", "reward_model_0", "rollout"]
    assert all(w.num_gpus == 0 and w.num_cpus == 0.5 for ws in plan.roles.values() for w in ws)
