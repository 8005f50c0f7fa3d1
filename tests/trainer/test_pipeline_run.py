"""`rlhf run examples/tiny-pipeline-cpu.yaml` (in-process here): SFT, then a reward model on
preference pairs starting from the SFT model, then GRPO from the SFT model rewarded by the trained
reward model, whose reward rises. Rerunning the pipeline does not rerun a finished stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rlhf_trainer.api.validation import validate_manifest

from .helpers import checkpoint_dir, metrics
from .stage_helpers import evals

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny-pipeline-cpu.yaml"


def test_tiny_pipeline_runs_sft_rm_and_rl_whose_reward_from_the_trained_rm_rises(
    demo_assets, tmp_path: Path, capsys
) -> None:
    from rlhf_trainer.demo.stages import build_stage_data
    from rlhf_trainer.runner import run_manifest

    root = str(Path(demo_assets["model"]).parent)
    build_stage_data(root)
    text = (
        EXAMPLE.read_text()
        .replace(".cache/demo", root)
        .replace("runs/tiny-pipeline-cpu", str(tmp_path / "ckpt"))
    )
    pipeline, errors = validate_manifest(yaml.safe_load(text))
    assert not errors
    out = tmp_path / "out"
    assert run_manifest(pipeline, output_dir=str(out), backend="local", metrics_port=0) == 0

    sft_loss = evals(metrics(out / "sft"), "sft/loss")
    rm_accuracy = evals(metrics(out / "rm"), "rm/accuracy")
    rl = metrics(out / "rl")
    rewards = [row["reward/mean"] for row in rl]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    task = [row["reward/task"] for row in rl]  # the verifiable task reward, logged with weight 0
    task_first, task_last = sum(task[:5]) / 5, sum(task[-5:]) / 5
    with capsys.disabled():
        print(
            f"\nsft eval loss {sft_loss[0]:.3f} -> {sft_loss[-1]:.3f}; rm eval accuracy {rm_accuracy[0]:.3f} -> "
            f"{rm_accuracy[-1]:.3f}; rl reward (trained RM) first 5 {first:.3f} -> last 5 {last:.3f}; "
            f"task reward {task_first:.3f} -> {task_last:.3f}"
        )
    assert sft_loss[-1] < sft_loss[0]
    assert rm_accuracy[-1] >= 0.9
    assert last > first + 0.5
    assert task_last > task_first + 0.2  # what the reward model learnt is the task

    # The RL stage was scored by the RM stage's export, and started from the SFT stage's.
    rl_status = json.loads((out / "rl" / "status.json").read_text())
    assert rl_status["progress"]["step"] == 40
    rm_status = json.loads((out / "rm" / "status.json").read_text())
    assert rm_status["latestCheckpoint"]["hfPath"] == str(
        checkpoint_dir(tmp_path / "ckpt" / "rm" / "checkpoints", 200) / "hf"
    )

    # Again: every stage is finished, so nothing trains.
    capsys.readouterr()
    assert run_manifest(pipeline, output_dir=str(out), backend="local", metrics_port=0) == 0
    printed = capsys.readouterr().out
    assert printed.count("already finished") == 3
    assert len(metrics(out / "rl")) == 40
