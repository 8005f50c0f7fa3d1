"""What a person watching the run sees: a progress bar on a terminal, one line per step otherwise."""

from __future__ import annotations

import math
import sys
from typing import Any, TextIO

_SHOWN = (
    ("reward/mean", "reward", "{:.3f}"),
    ("kl/mean", "kl", "{:.4f}"),
    ("response_length/mean", "len", "{:.1f}"),
    ("timing/step_s", "step", "{:.1f}s"),
)


def summary(metrics: dict[str, float]) -> list[tuple[str, str]]:
    return [
        (label, fmt.format(metrics[key]))
        for key, label, fmt in _SHOWN
        if key in metrics and math.isfinite(metrics[key])
    ]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressDisplay:
    def __init__(self, total_steps: int, stream: TextIO | None = None) -> None:
        self.total_steps = total_steps
        self.stream = stream or sys.stderr
        self._bar: Any = None
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, file=self.stream, unit="step", dynamic_ncols=True)

    def update(self, step: int, metrics: dict[str, float], eta: float | None) -> None:
        fields = summary(metrics)
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix_str(" ".join(f"{k}={v}" for k, v in fields), refresh=False)
            self._bar.refresh()
            return
        percent = 100.0 * step / self.total_steps if self.total_steps else 0.0
        parts = [f"step {step}/{self.total_steps} ({percent:.0f}%)", *(f"{k} {v}" for k, v in fields)]
        parts.append(f"eta {_duration(eta)}")
        print(" | ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
