"""Helpers of the trainer tests: tiny job manifests, running them, reading what they wrote."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

from rlhf_trainer.api.validation import validate_manifest

# Rewards for the tests, importable as `tiny_rewards:<name>` once the fixture puts the module's
# directory on sys.path. `varied` gives every completion a different score, so group estimators
# always see non-zero advantages and every parameter receives a gradient.
TINY_REWARDS = '''
import os

CALLS = {"n": 0}


def varied(prompts, completions, labels):
    return [((sum(map(ord, c)) * 7919) % 101) / 100.0 for c in completions]


def crash_after(prompts, completions, labels):
    """varied, but raises on call number $TINY_REWARD_CRASH_AT (a crash in the middle of a run)."""
    CALLS["n"] += 1
    if CALLS["n"] == int(os.environ.get("TINY_REWARD_CRASH_AT", "0")):
        raise RuntimeError("simulated crash")
    return varied(prompts, completions, labels)
'''


def manifest(
    model: str, prompts: str, algorithm: str = "grpo", overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A tiny job: 2 prompts x 2 samples, 4 new tokens, 2 steps, CPU, ZeRO 0; `overrides` are
    deep-merged into the spec (wire keys)."""
    role = {"model": model, "gpus": 0, "zeroStage": 0, "precision": "fp32"}
    spec: dict[str, Any] = {
        "algorithm": {"name": algorithm, "samplesPerPrompt": 2, "kl": {"coef": 0.0}},
        "models": {
            "actor": dict(role),
            "reward": [{"function": "tiny_rewards:varied"}],
            "rollout": {"engine": "hf", "engines": 0},
        },
        "data": {"prompts": {"path": prompts, "inputKey": "prompt", "labelKey": "answer"}},
        "training": {
            "rolloutBatchSize": 2,
            "trainBatchSize": 4,
            "microBatchSize": 2,
            "maxSteps": 2,
            "actorLearningRate": 1e-3,
            "criticLearningRate": 1e-3,
            "seed": 3,
        },
        "generation": {"maxPromptLength": 16, "maxNewTokens": 4},
    }
    if algorithm == "ppo":
        spec["models"]["critic"] = dict(role)
    if algorithm == "grpovi":
        spec["algorithm"]["rewardRange"] = {"mode": "fixed", "low": 0.0, "high": 1.0}
    merge(spec, overrides or {})
    return {"apiVersion": "rlhf.io/v1alpha1", "kind": "RLHFJob", "metadata": {"name": "tiny"}, "spec": spec}


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Deep-merge overrides into base (dicts merge, everything else replaces)."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def run(doc: dict[str, Any], output: Path, backend: str = "local") -> int:
    from rlhf_trainer.runner import run_manifest

    job, errors = validate_manifest(doc)
    assert not errors, errors
    return run_manifest(job, output_dir=str(output), backend=backend, metrics_port=0)


def metrics(output: Path) -> list[dict[str, Any]]:
    with open(output / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def hf_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {
        k: v.detach().clone() for k, v in AutoModelForCausalLM.from_pretrained(str(path)).state_dict().items()
    }


def trainable_names(path: str | os.PathLike) -> list[str]:
    from transformers import AutoModelForCausalLM

    return [
        n for n, p in AutoModelForCausalLM.from_pretrained(str(path)).named_parameters() if p.requires_grad
    ]


def checkpoint_dir(root: str | os.PathLike, step: int) -> Path:
    """The committed checkpoint of `step` under a checkpoint directory (its newest run's, in the
    layout of rlhf_trainer.checkpoint_store: step_000004.a000000.r000/ with a COMMITTED marker)."""
    found = sorted(p for p in Path(root).glob(f"step_{step:06d}.a*") if (p / "COMMITTED").is_file())
    assert found, f"no committed checkpoint of step {step} in {sorted(p.name for p in Path(root).iterdir())}"
    return found[-1]


def checkpoint_steps(root: str | os.PathLike) -> list[int]:
    """The steps of the committed checkpoints under a checkpoint directory, oldest first."""
    return sorted(int(p.name[5:11]) for p in Path(root).glob("step_*") if (p / "COMMITTED").is_file())
