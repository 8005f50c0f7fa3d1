"""The curves PNG written at the end of a run."""

from __future__ import annotations

import json
import math
from typing import Any

PANELS = (
    ("reward/mean", "reward"),
    ("kl/mean", "KL to reference"),
    ("response_length/mean", "response length (tokens)"),
    ("timing/step_s", "step time (s)"),
)
# The offline stages plot their losses and held-out diagnostics instead.
STAGE_PANELS = {
    "sft": (
        ("sft/loss", "loss"),
        ("eval/sft/loss", "held-out loss"),
        ("sft/grad_norm", "grad norm"),
        ("timing/step_s", "step time (s)"),
    ),
    "rm": (
        ("rm/loss", "loss"),
        ("eval/rm/accuracy", "held-out pairwise accuracy"),
        ("eval/rm/margin", "held-out margin"),
        ("timing/step_s", "step time (s)"),
    ),
    "dpo": (
        ("dpo/loss", "loss"),
        ("eval/dpo/accuracy", "held-out implicit-reward accuracy"),
        ("eval/dpo/margin", "held-out margin"),
        ("timing/step_s", "step time (s)"),
    ),
    "kto": (
        ("kto/loss", "loss"),
        ("eval/kto/margin", "held-out desirable - undesirable reward"),
        ("kto/kl", "KL reference point"),
        ("timing/step_s", "step time (s)"),
    ),
}


def panels_for(algorithm: str) -> tuple[tuple[str, str], ...]:
    return STAGE_PANELS.get(algorithm, PANELS)


def read_rows(path: str) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl, one per step: where an attempt resumed from an earlier checkpoint
    and logged a step again, the later row wins."""
    by_step: dict[int, dict[str, Any]] = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if isinstance(row, dict) and isinstance(row.get("step"), int):
                    by_step[row["step"]] = row
    except FileNotFoundError:
        return []
    return [by_step[step] for step in sorted(by_step)]


def write_curves(
    rows: list[dict[str, Any]], path: str, title: str = "", panels: tuple[tuple[str, str], ...] = PANELS
) -> None:
    """A 2x2 PNG: reward, KL, response length and step time (or a stage's `panels`) against the step."""
    # The figure API without pyplot: no global state, no GUI backend, safe in any thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 7), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2)
    for ax, (key, label) in zip(axes.flat, panels, strict=True):
        points = [
            (row["step"], row[key])
            for row in rows
            if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])
        ]
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path)
