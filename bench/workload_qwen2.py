"""The issue-17 workload: a ~3.5M-parameter Qwen2 built locally with a fixed seed, 11-character
prompts, 16 prompts x 8 samples, up to 32 new tokens, lr 1e-4, KL 0, fp32, HF generation.
Its long-prompt variant (`qwen2-3.5m-long`) is the same with 96-character prompts (instructions
of filler words before the letter), the shape of chat and reasoning prompts, which are longer
than their answers.

    .venv/bin/python bench/workload_qwen2.py [--root .cache/bench/qwen2-3.5m] [--prompt-chars 96]

The model uses the demo's character tokenizer (rlhf_trainer.demo.build) and the demo task's reward
(the fraction of completion characters equal to the prompt's letter); only the model size, the
prompt length and the batch shape differ from `make demo`. One RL step: 128 completions, one
optimizer step of 128 samples (trainBatchSize 128) in micro batches of 32.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path
from typing import Any

from common import REPO

ROOT = REPO / ".cache" / "bench" / "qwen2-3.5m"
SEED = 1234
VERSION = "1"
# 11 characters each, the letter last (as in the demo task).
TEMPLATES = ("now write {c}", "just type {c}", "output is {c}", "copy this {c}", "answer is {c}")
TARGETS = "abcdefgh"
FILLER = ("please", "read", "this", "and", "then", "write", "only", "one", "letter", "many", "times", "now")
LONG_CHARS = 96


def make_prompts(count: int, seed: int, chars: int = 11) -> list[dict[str, str]]:
    """`count` prompts of `chars` characters ending in the letter to write (11: the templates;
    longer: filler words before the template)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        c = rng.choice(TARGETS)
        text = rng.choice(TEMPLATES).format(c=c)
        words: list[str] = []
        while len(" ".join(words)) < chars - len(text) - 1:
            words.append(rng.choice(FILLER))
        if words:
            text = " ".join(words)[: chars - len(text) - 1] + " " + text
        assert len(text) == chars, text
        rows.append({"prompt": text, "answer": c})
    return rows


def build(root: Path = ROOT, force: bool = False, prompt_chars: int = 11) -> dict[str, str]:
    """Model (hidden 256, 4 layers, 4 heads of 64, MLP 800: 3.5M parameters), tokenizer, prompts."""
    model_dir, prompts = root / "model", root / "prompts.jsonl"
    marker = root / "VERSION"
    paths = {"model": str(model_dir), "prompts": str(prompts)}
    if not force and marker.exists() and marker.read_text().strip() == f"{VERSION} {prompt_chars}":
        return paths
    from rlhf_trainer.demo.build import build_model, build_tokenizer

    os.makedirs(model_dir, exist_ok=True)
    tokenizer = build_tokenizer(str(model_dir))
    build_model(
        str(model_dir), tokenizer, hidden=256, intermediate=800, layers=4, heads=4, kv_heads=4, seed=SEED
    )
    with open(prompts, "w") as f:
        for row in make_prompts(512, SEED, prompt_chars):
            f.write(json.dumps(row) + "\n")
    marker.write_text(f"{VERSION} {prompt_chars}\n")
    return paths


def manifest(
    root: Path = ROOT, steps: int = 30, staleness: int | None = None, prompt_chars: int = 11
) -> dict[str, Any]:
    """The RLHFJob of this workload (paths absolute, checkpoints off: TRL saves nothing either)."""
    if prompt_chars != 11 and root == ROOT:
        root = ROOT.with_name(f"qwen2-3.5m-p{prompt_chars}")
    paths = build(root, prompt_chars=prompt_chars)
    training: dict[str, Any] = {
        "rolloutBatchSize": 16,
        "trainBatchSize": 128,
        "microBatchSize": 32,
        "maxSteps": steps,
        "actorLearningRate": 1.0e-4,
        "lrSchedule": "constant",
        "seed": 7,
    }
    doc: dict[str, Any] = {
        "apiVersion": "rlhf.io/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": "bench-qwen2-3p5m"},
        "spec": {
            "algorithm": {"name": "grpo", "samplesPerPrompt": 8, "kl": {"coef": 0.0}},
            "models": {
                "actor": {"model": paths["model"], "gpus": 0, "zeroStage": 0, "precision": "fp32"},
                "reward": [{"function": "rlhf_trainer.demo.task:reward", "weight": 1.0}],
                "rollout": {"engine": "hf", "engines": 1},
            },
            "data": {"prompts": {"path": paths["prompts"], "inputKey": "prompt", "labelKey": "answer"}},
            "training": training,
            "generation": {"maxPromptLength": prompt_chars + 5, "maxNewTokens": 32, "temperature": 1.0},
        },
    }
    if staleness is not None:
        doc["spec"]["training"]["maxStaleness"] = staleness
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--prompt-chars", type=int, default=11)
    args = parser.parse_args()
    import yaml

    print(yaml.safe_dump(manifest(args.root, prompt_chars=args.prompt_chars)))


if __name__ == "__main__":
    main()
