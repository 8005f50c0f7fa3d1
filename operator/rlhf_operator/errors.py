"""Errors of the operator's pure functions."""

from __future__ import annotations


class RenderError(ValueError):
    """A job whose spec passes validation but cannot be turned into Kubernetes objects.

    The message starts with the field path at fault, e.g. `spec.models.actor.gpus: ...`.
    `reason` is the condition reason a job failed for it carries.
    """

    reason = "RenderFailed"

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")
