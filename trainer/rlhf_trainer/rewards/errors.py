"""Errors of the reward sources."""

from __future__ import annotations


class RewardConfigError(ValueError):
    """A reward source cannot be used as declared. The message starts with the field path,
    e.g. `spec.models.reward[0].function: cannot import module 'x': ...`."""


class RewardError(RuntimeError):
    """A reward source failed while scoring (bad return value, server error, timeout)."""
