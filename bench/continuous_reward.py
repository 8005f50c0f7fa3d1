"""A continuous reward bunched within each group, as a reward model's scores are: the demo task's
score (the fraction of completion characters equal to the prompt's letter, f in [0, 1]) squashed
by a sigmoid into the narrow band [0.45, 0.55]:

    r = 0.45 + 0.1 * sigmoid(8 * (f - 0.5))

A random policy (f ~ 0.03) scores ~0.452 with within-group spreads of a few thousandths; monotone
in f, so "more of the letter" is still what pays. Used by `bench_grpovi_vs_grpo.py --task continuous`
(importable as `continuous_reward:reward`: bench/ is on the workers' PYTHONPATH).
"""

from __future__ import annotations

import math
from typing import Any

LOW, WIDTH, SLOPE, CENTRE = 0.45, 0.1, 8.0, 0.5


def squash(fraction: float) -> float:
    return LOW + WIDTH / (1.0 + math.exp(-SLOPE * (fraction - CENTRE)))


def reward(prompts: list[str], completions: list[str], labels: list[Any]) -> list[float]:
    from rlhf_trainer.demo.task import reward as fraction

    return [squash(f) for f in fraction(prompts, completions, labels)]
