"""A reward computed by a Python callable named `module.path:callable`."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .errors import RewardConfigError

RewardFn = Callable[..., Sequence[float]]


def import_callable(target: str, field: str) -> RewardFn:
    """Import `module.path:callable`; errors start with `field`.

    The current directory goes on sys.path first, so a module sitting next to the manifest
    (`my_rewards.py` + `function: my_rewards:score`) is found without packaging it.
    """
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise RewardConfigError(f"{field}: '{target}' is not of the form module.path:callable")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any error raised while importing user code is a config error
        raise RewardConfigError(
            f"{field}: cannot import module '{module_name}': {type(exc).__name__}: {exc}"
        ) from exc
    try:
        fn = getattr(module, attr)
    except AttributeError as exc:
        raise RewardConfigError(f"{field}: module '{module_name}' has no attribute '{attr}'") from exc
    if not callable(fn):
        raise RewardConfigError(f"{field}: '{target}' is a {type(fn).__name__}, not a callable")
    return fn


class FunctionReward:
    """Calls fn(prompts=..., completions=..., labels=...) -> list[float]. Imported on first use."""

    def __init__(self, target: str, field: str) -> None:
        self.target = target
        self.field = field
        self._fn: RewardFn | None = None

    def preflight(self) -> None:
        if self._fn is None:
            self._fn = import_callable(self.target, self.field)

    def __call__(self, prompts: list[str], completions: list[str], labels: list[Any]) -> Sequence[float]:
        self.preflight()
        assert self._fn is not None
        return self._fn(prompts=prompts, completions=completions, labels=labels)

    def describe(self) -> str:
        return f"function {self.target}"
