"""Toy data of the offline stages, built locally beside the demo model (nothing is downloaded).

The task is the demo's (task.py): the prompt names a letter, a good completion repeats it.
- sft: prompt -> a response that half repeats the letter (SFT teaches the format and part of the
  task, so the RL stage after it still has reward to gain);
- preferences (rm, dpo): the chosen completion holds the letter 3-4 times out of 4, the rejected
  one 0-1 times (the rest: one other letter of the task repeated, or any characters, so that a
  reward model must read the prompt rather than reward any repeated letter);
- kto: the same completions unpaired, labelled desirable (true) or undesirable (false).
Each comes with a held-out split (`*-eval.jsonl`) drawn with another seed.
"""

from __future__ import annotations

import json
import os
import random

from .task import TARGETS, TEMPLATES

VERSION = "2"
LENGTH = 4
FILLER = "abcdefghijklmnopqrstuvwxyz0123456789"


def _completion(rng: random.Random, target: str, hits: int) -> str:
    """`hits` copies of the target letter; the rest either one other letter of the task repeated
    (so that repeating a letter is not enough: a scorer must read the prompt) or any characters."""
    wrong = rng.choice([c for c in TARGETS if c != target])
    if rng.random() < 0.5:
        rest = [wrong] * (LENGTH - hits)
    else:
        rest = [rng.choice([c for c in FILLER if c != target]) for _ in range(LENGTH - hits)]
    chars = [target] * hits + rest
    rng.shuffle(chars)
    return "".join(chars)


def _prompt(rng: random.Random) -> tuple[str, str]:
    target = rng.choice(TARGETS)
    return rng.choice(TEMPLATES).format(c=target), target


def sft_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt, target = _prompt(rng)
        rows.append({"prompt": prompt, "response": _completion(rng, target, 2)})
    return rows


def preference_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt, target = _prompt(rng)
        rows.append(
            {
                "prompt": prompt,
                "chosen": _completion(rng, target, rng.choice((3, 4))),
                "rejected": _completion(rng, target, rng.choice((0, 1))),
            }
        )
    return rows


def kto_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt, target = _prompt(rng)
        good = rng.random() < 0.5
        hits = rng.choice((3, 4)) if good else rng.choice((0, 1))
        rows.append({"prompt": prompt, "completion": _completion(rng, target, hits), "label": good})
    return rows


def _write(path: str, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def build_stage_data(
    root: str = ".cache/demo", force: bool = False, rows: int = 512, eval_rows: int = 64
) -> dict[str, str]:
    """Write sft, preferences and kto JSONL files (+ -eval splits) under `root`; returns their paths."""
    builders = {"sft": sft_rows, "preferences": preference_rows, "kto": kto_rows}
    paths = {}
    for name in builders:
        paths[name] = os.path.join(root, f"{name}.jsonl")
        paths[f"{name}-eval"] = os.path.join(root, f"{name}-eval.jsonl")
    marker = os.path.join(root, "STAGES_VERSION")
    if not force and os.path.exists(marker) and open(marker).read().strip() == VERSION:
        return paths
    os.makedirs(root, exist_ok=True)
    for index, (name, build) in enumerate(builders.items()):
        _write(paths[name], build(rows, 100 + index))
        _write(paths[f"{name}-eval"], build(eval_rows, 200 + index))
    with open(marker, "w") as f:
        f.write(VERSION + "\n")
    return paths
