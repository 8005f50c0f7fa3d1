"""The demo's verifiable toy task: the prompt names a letter; the completion should repeat it.

reward = (characters of the completion equal to the named letter) / (characters of the completion),
0 for an empty completion; always in [0, 1]. A random policy scores about 1 / vocabulary size
(~0.03), with partial credit, so GRPO has signal from the first step. Targets come from 8 letters:
always writing one of them scores 1/8, so a reward well above 0.125 means the policy reads the
prompt.
"""

from __future__ import annotations

import random
from typing import Any

TARGETS = "abcdefgh"
# The letter ends the prompt: the first completion token is chosen right after reading it.
TEMPLATES = ("say {c}", "repeat {c}", "write {c}", "only {c}", "more {c}")


def reward(prompts: list[str], completions: list[str], labels: list[Any]) -> list[float]:
    scores = []
    for completion, label in zip(completions, labels, strict=True):
        target = str(label)
        scores.append(sum(ch == target for ch in completion) / len(completion) if completion else 0.0)
    return scores


def make_prompts(count: int, seed: int) -> list[dict[str, str]]:
    """`count` prompts with their target character as the label."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        c = rng.choice(TARGETS)
        rows.append({"prompt": rng.choice(TEMPLATES).format(c=c), "answer": c})
    return rows
