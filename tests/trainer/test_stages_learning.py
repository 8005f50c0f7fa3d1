"""The offline stages learn on CPU (real DeepSpeed, the demo's tiny Qwen2, the toy stage data of
rlhf_trainer/demo/stages.py), judged on the held-out split: SFT lowers the held-out loss, the reward
model's pairwise accuracy rises well above chance and its export scores through the `reward` role's
loader, DPO's implicit-reward accuracy and margin grow, KTO's loss falls and its rewards separate."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import checkpoint_dir, metrics, run
from .stage_helpers import checkpoint, evals, stage_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stage_data(demo_assets: dict[str, str]) -> dict[str, str]:
    from rlhf_trainer.demo.stages import build_stage_data

    return build_stage_data(str(Path(demo_assets["model"]).parent))


def test_sft_lowers_the_held_out_loss(demo_assets, stage_data, tmp_path: Path) -> None:
    doc = stage_manifest("sft", demo_assets["model"], stage_data, checkpoint(tmp_path / "ckpt", 20))
    assert run(doc, tmp_path / "out") == 0
    rows = metrics(tmp_path / "out")
    held_out = evals(rows, "sft/loss")
    print("sft eval/sft/loss:", [round(v, 3) for v in held_out])
    assert len(held_out) == 5  # after step 1, then every 5 steps
    assert held_out[-1] < 0.8 * held_out[0]
    assert all(b < a for a, b in zip(held_out, held_out[1:], strict=False))
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(checkpoint_dir(tmp_path / "ckpt", 20) / "hf")


def test_reward_model_accuracy_rises_and_its_export_loads_as_a_reward(
    demo_assets, stage_data, tmp_path
) -> None:
    doc = stage_manifest(
        "rm",
        demo_assets["model"],
        stage_data,
        {
            **checkpoint(tmp_path / "ckpt", 200),
            "training": {
                "maxSteps": 200,
                "trainBatchSize": 32,
                "microBatchSize": 32,
                "actorLearningRate": 1e-3,
                "evalEverySteps": 50,
            },
        },
    )
    assert run(doc, tmp_path / "out") == 0
    accuracy = evals(metrics(tmp_path / "out"), "rm/accuracy")
    print("rm eval/rm/accuracy:", accuracy)
    assert accuracy[-1] >= 0.85 and accuracy[-1] > accuracy[0] + 0.1

    import json

    from rlhf_trainer.rewards.model import RewardModelScorer

    scorer = RewardModelScorer(str(checkpoint_dir(tmp_path / "ckpt", 200) / "hf"), precision="fp32")
    rows = [json.loads(line) for line in open(stage_data["preferences-eval"])]
    chosen = scorer.score([r["prompt"] + r["chosen"] for r in rows])
    rejected = scorer.score([r["prompt"] + r["rejected"] for r in rows])
    wins = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(rows)
    assert wins == pytest.approx(accuracy[-1], abs=1e-9)  # the loader scores as the stage trained


@pytest.mark.parametrize(
    "variant", [{}, {"lossType": "ipo"}, {"labelSmoothing": 0.1}], ids=["dpo", "ipo", "conservative"]
)
def test_dpo_implicit_reward_accuracy_and_margin_grow(demo_assets, stage_data, tmp_path, variant) -> None:
    doc = stage_manifest(
        "dpo",
        demo_assets["model"],
        stage_data,
        {"algorithm": {"dpo": {"beta": 0.5, **variant}}, "training": {"maxSteps": 15}},
    )
    assert run(doc, tmp_path / "out") == 0
    rows = metrics(tmp_path / "out")
    accuracy, margin = evals(rows, "dpo/accuracy"), evals(rows, "dpo/margin")
    print(variant, "dpo eval accuracy:", accuracy, "margin:", [round(m, 3) for m in margin])
    assert accuracy[-1] >= 0.75 and accuracy[-1] > accuracy[0]
    assert margin[-1] > margin[0] and margin[-1] > 0


def test_kto_loss_falls_and_rewards_separate(demo_assets, stage_data, tmp_path) -> None:
    doc = stage_manifest(
        "kto",
        demo_assets["model"],
        stage_data,
        {
            "algorithm": {"kto": {"beta": 0.5}},
            "training": {
                "trainBatchSize": 32,
                "microBatchSize": 32,
                "maxSteps": 30,
                "actorLearningRate": 2e-3,
                "evalEverySteps": 10,
            },
        },
    )
    assert run(doc, tmp_path / "out") == 0
    rows = metrics(tmp_path / "out")
    losses = [row["kto/loss"] for row in rows]
    held_out, margin = evals(rows, "kto/loss"), evals(rows, "kto/margin")
    print(
        "kto loss:",
        [round(v, 3) for v in losses],
        "eval loss:",
        [round(v, 3) for v in held_out],
        "eval margin:",
        [round(m, 3) for m in margin],
    )
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.02
    assert held_out[-1] < held_out[0] - 0.02
    assert margin[-1] > margin[0] and margin[-1] > 0
    last = rows[-1]
    assert last["eval/kto/chosen_reward"] > last["eval/kto/rejected_reward"]
