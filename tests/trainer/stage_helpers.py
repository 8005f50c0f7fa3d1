"""Tiny offline-stage jobs for the tests: the demo's model, the stage toy data, CPU, ZeRO 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .helpers import merge

DATA = {"sft": "sft", "rm": "preferences", "dpo": "preferences", "kto": "kto"}


def stage_manifest(
    stage: str, model: str, data: dict[str, str], overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """16 examples per step in one micro batch, evaluation on the held-out split every 5 steps."""
    name = DATA[stage]
    spec: dict[str, Any] = {
        "algorithm": {"name": stage},
        "models": {"actor": {"model": model, "gpus": 0, "zeroStage": 0, "precision": "fp32"}},
        "data": {"prompts": {"path": data[name]}, "eval": {"path": data[f"{name}-eval"]}},
        "training": {
            "trainBatchSize": 16,
            "microBatchSize": 16,
            "maxSteps": 20,
            "actorLearningRate": 3e-3,
            "lrSchedule": "constant",
            "evalEverySteps": 5,
            "seed": 5,
        },
        "generation": {"maxPromptLength": 16, "maxNewTokens": 4},
    }
    merge(spec, overrides or {})
    return {
        "apiVersion": "rlhf.io/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": f"tiny-{stage}"},
        "spec": spec,
    }


def evals(rows: list[dict[str, Any]], key: str) -> list[float]:
    """The held-out values of `key` (eval/<key>) in step order."""
    return [row[f"eval/{key}"] for row in rows if f"eval/{key}" in row]


def checkpoint(path: Path, every: int, keep: int = 3) -> dict[str, Any]:
    return {"checkpoint": {"path": str(path), "everySteps": every, "keep": keep, "resume": "auto"}}
