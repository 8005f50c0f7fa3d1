"""Toy data of the offline stages, built locally beside the demo model (nothing is downloaded).

The task is the demo's (task.py): the prompt names a letter, a good completion repeats it.
- sft: prompt -> a response that half repeats the letter (SFT teaches the format and part of the
  task, so the RL stage after it still has reward to gain);
- preferences (rm, dpo): the chosen completion is only the letter, or holds it 3 times out of 4,
  the rejected one at most once in 4 (the rest: one other letter of the task repeated, or any
  characters, so that a reward model must read the prompt rather than reward any repeated
  letter); both sides are sometimes shorter than 4 and the rejected one sometimes empty, so that
  a reward model also judges the short completions a policy can learn to stop at;
- kto: 4-character completions unpaired, labelled desirable (true) or undesirable (false).
Each comes with a held-out split (`*-eval.jsonl`) drawn with another seed; the preferences have
4 times as many rows (2048 and 256 by default).
"""

from __future__ import annotations

import json
import os
import random

from .task import TARGETS, TEMPLATES

VERSION = "3"
LENGTH = 4
FILLER = "abcdefghijklmnopqrstuvwxyz0123456789"


def _completion(rng: random.Random, target: str, hits: int, length: int = LENGTH) -> str:
    """`hits` copies of the target letter in `length` characters; the rest either one other letter
    of the task repeated (so that repeating a letter is not enough: a scorer must read the prompt)
    or any characters."""
    wrong = rng.choice([c for c in TARGETS if c != target])
    if rng.random() < 0.5:
        rest = [wrong] * (length - hits)
    else:
        rest = [rng.choice([c for c in FILLER if c != target]) for _ in range(length - hits)]
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


def _length(rng: random.Random, shortest: int) -> int:
    """Half the completions are full length, the rest shorter (down to `shortest`), so that a
    reward model also judges the short completions a policy can stop at."""
    return LENGTH if rng.random() < 0.5 else rng.randint(shortest, LENGTH - 1)


def preference_rows(count: int, seed: int) -> list[dict]:
    """Chosen: the letter in every position, or 3 of 4; rejected: at most one in 4, none in a
    shorter one, or nothing at all. Lengths vary on both sides, so length alone tells nothing but
    the empty answer."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt, target = _prompt(rng)
        good, bad = _length(rng, 1), _length(rng, 0)
        chosen_hits = rng.choice((3, 4)) if good == LENGTH else good
        rejected_hits = rng.choice((0, 1)) if bad == LENGTH else 0
        rejected = _completion(rng, target, rejected_hits, bad)
        if bad and rng.random() < 0.25:  # what another prompt would want: only read, not seen
            rejected = rng.choice([c for c in TARGETS if c != target]) * bad
        rows.append(
            {"prompt": prompt, "chosen": _completion(rng, target, chosen_hits, good), "rejected": rejected}
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
        # More preference pairs than the rest: a reward model that has seen few overfits them,
        # and a policy then finds the completions it misjudges.
        scale = 4 if name == "preferences" else 1
        _write(paths[name], build(rows * scale, 100 + index))
        _write(paths[f"{name}-eval"], build(eval_rows * scale, 200 + index))
    with open(marker, "w") as f:
        f.write(VERSION + "\n")
    return paths
