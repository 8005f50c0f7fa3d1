"""Every estimator trains through the one RL loop on CPU with real DeepSpeed: 2 steps, finite
losses, and every trainable parameter of the actor changed. Most run in-process (local backend);
ppo and grpo also run on Ray."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from .estimator_checks import check_run, with_checkpoint
from .helpers import manifest

pytestmark = pytest.mark.slow

LOCAL = ["ppo", "grpo", "dr_grpo", "reinforce_pp", "reinforce_pp_baseline", "rloo", "grpovi"]


@pytest.mark.parametrize("algorithm", LOCAL)
def test_estimator_trains_on_the_local_backend(
    algorithm: str, demo_assets: dict, tiny_rewards: str, tmp_path: Path, output: Path
) -> None:
    extra: dict = {}
    if algorithm == "rloo":  # recomputed activations must give the same training signal
        extra = {"models": {"actor": {"gradientCheckpointing": True}}}
    if algorithm in ("ppo", "reinforce_pp"):
        # KL folded into the reward against a reference: the old log-probs pass runs too.
        extra = {
            "algorithm": {"kl": {"coef": 0.05, "estimator": "k1"}},
            "models": {"reference": {"model": demo_assets["model"], "gpus": 0}},
        }
    doc = with_checkpoint(manifest(demo_assets["model"], demo_assets["prompts"], algorithm, extra), tmp_path)
    rows = check_run(doc, output, demo_assets["model"], "local")
    if algorithm == "ppo":
        assert all(math.isfinite(r["critic/vf_loss"]) for r in rows)
        assert rows[-1]["timing/values_s"] > 0 and rows[-1]["timing/reference_s"] > 0
    if algorithm in ("ppo", "reinforce_pp"):
        # Step 2 runs a changed policy against the frozen reference.
        assert rows[-1]["kl/mean"] != 0.0


def test_grpo_with_kl_loss_epochs_several_optimizer_steps_and_eval(
    demo_assets: dict, tiny_rewards: str, tmp_path: Path, output: Path
) -> None:
    doc = manifest(
        demo_assets["model"],
        demo_assets["prompts"],
        "grpo",
        {
            "algorithm": {"epochs": 2, "kl": {"coef": 0.1, "estimator": "k3", "asLoss": True}},
            "models": {"reference": {"model": demo_assets["model"], "gpus": 0}},
            "training": {
                "rolloutBatchSize": 4,
                "trainBatchSize": 4,
                "microBatchSize": 2,
                "evalEverySteps": 2,
            },
            "data": {
                "eval": {
                    "path": demo_assets["prompts"],
                    "inputKey": "prompt",
                    "labelKey": "answer",
                    "maxSamples": 3,
                }
            },
        },
    )
    rows = check_run(with_checkpoint(doc, tmp_path), output, demo_assets["model"], "local")
    assert rows[-1]["timing/old_logprobs_s"] > 0  # 2 epochs x 2 train batches: old log-probs needed
    assert rows[-1]["kl/mean"] > 0 and rows[-1]["actor/kl_loss"] > 0
    assert "eval/reward/mean" not in rows[0] and 0.0 <= rows[1]["eval/reward/mean"] <= 1.0


def test_ppo_trains_on_ray(
    demo_assets: dict, tiny_rewards: str, ray_cluster: None, tmp_path: Path, output: Path
) -> None:
    """Actor, critic, reference and a separate rollout engine as Ray actors; the engine takes the
    actor's weights after every update. (grpo on Ray: test_rewards_combined.)"""
    extra = {
        "algorithm": {"kl": {"coef": 0.05}},
        "models": {
            "reference": {"model": demo_assets["model"], "gpus": 0},
            "rollout": {"engine": "hf", "engines": 1},
        },
    }
    doc = with_checkpoint(manifest(demo_assets["model"], demo_assets["prompts"], "ppo", extra), tmp_path)
    rows = check_run(doc, output, demo_assets["model"], "ray")
    assert rows[-1]["timing/weight_sync_s"] > 0
    assert all(math.isfinite(r["critic/vf_loss"]) for r in rows)
