"""Exact resume of every offline stage: a run resumed from the step-2 checkpoint of an
uninterrupted run (weights, Adam moments, LR schedule, data position, RNG) reaches exactly the
uninterrupted run's step-4 weights and metrics."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from .helpers import checkpoint_dir, metrics, run
from .stage_helpers import checkpoint, stage_manifest

pytestmark = pytest.mark.slow


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo", "kto"])
def test_a_resumed_stage_reproduces_the_uninterrupted_run(demo_assets, stage, tmp_path: Path) -> None:
    from rlhf_trainer.demo.stages import build_stage_data

    data = build_stage_data(str(Path(demo_assets["model"]).parent))
    # Cosine with warmup, 2 micro batches per step, shuffled data: all of it must be restored.
    overrides = {
        "training": {
            "maxSteps": 4,
            "trainBatchSize": 8,
            "microBatchSize": 4,
            "lrSchedule": "cosine",
            "warmupRatio": 0.25,
            "evalEverySteps": 0,
        }
    }
    full = stage_manifest(stage, demo_assets["model"], data, {**overrides, **checkpoint(tmp_path / "a", 2)})
    full["spec"]["data"].pop("eval")
    assert run(full, tmp_path / "out-a") == 0

    (tmp_path / "b").mkdir()
    step2 = checkpoint_dir(tmp_path / "a", 2)
    shutil.copytree(step2, tmp_path / "b" / step2.name)
    resumed = stage_manifest(
        stage, demo_assets["model"], data, {**overrides, **checkpoint(tmp_path / "b", 2)}
    )
    resumed["spec"]["data"].pop("eval")
    assert run(resumed, tmp_path / "out-b") == 0  # resume: auto picks step 2

    expected, got = (
        _weights(checkpoint_dir(tmp_path / "a", 4) / "hf"),
        _weights(checkpoint_dir(tmp_path / "b", 4) / "hf"),
    )
    assert expected.keys() == got.keys()
    assert not [name for name in expected if not torch.equal(expected[name], got[name])]
    a, b = metrics(tmp_path / "out-a"), metrics(tmp_path / "out-b")
    assert [r["step"] for r in b] == [3, 4]
    loss = f"{stage}/loss"
    assert [r[loss] for r in b] == [r[loss] for r in a[2:]]
    assert [r[f"{stage}/lr"] for r in b] == [r[f"{stage}/lr"] for r in a[2:]]
