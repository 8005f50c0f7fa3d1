"""What every training test checks: the run succeeded, losses are finite, every trainable actor
parameter changed (final HF export against the initial model)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .helpers import checkpoint_dir, hf_weights, metrics, run, trainable_names


def check_run(doc: dict, output: Path, model: str, backend: str) -> list[dict]:
    assert run(doc, output, backend) == 0
    rows = metrics(output)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("actor/pg_loss", "actor/entropy", "actor/grad_norm", "reward/mean", "timing/step_s"):
            assert math.isfinite(row[key]), (key, row[key])
        assert all(f"timing/{phase}_s" in row for phase in ("generate", "reward", "advantage", "train_actor"))
    before = hf_weights(model)
    after = hf_weights(checkpoint_dir(Path(doc["spec"]["checkpoint"]["path"]), 2) / "hf")
    unchanged = [n for n in trainable_names(model) if torch.equal(before[n], after[n])]
    assert not unchanged, f"parameters that did not change: {unchanged}"
    return rows


def with_checkpoint(doc: dict, tmp_path: Path) -> dict:
    doc["spec"]["checkpoint"] = {
        "path": str(tmp_path / "ckpt"),
        "everySteps": 2,
        "keep": 1,
        "resume": "never",
    }
    return doc
