"""Metric names of reward sources: `reward/<name>` in metrics.jsonl, the status and Prometheus.

Pure functions of the spec, so the telemetry can name per-source gauges without building the
sources themselves.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from ..api.spec import RewardSource, RLHFJobSpec
from .errors import RewardConfigError

# reward/mean and reward/std are the totals; a source with one of these names would overwrite them.
RESERVED_NAMES = frozenset({"mean", "std", "min", "max", "total"})
_MAX_NAME = 63


def _sanitise(raw: str) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", raw.lower()).strip("-_")
    return name[:_MAX_NAME].rstrip("-_") or "reward"


def derived_name(source: RewardSource) -> str:
    """The name a source gets when `name` is unset: function name, url host, model dir basename."""
    if source.function is not None:
        return _sanitise(source.function.rsplit(":", 1)[1])
    if source.url is not None:
        return _sanitise((urlsplit(source.url).hostname or "url").replace(".", "-"))
    assert source.model is not None
    return _sanitise(source.model.rstrip("/").rsplit("/", 1)[-1])


def reward_source_names(spec: RLHFJobSpec) -> list[str]:
    """One unique metric name per `spec.models.reward[i]`, in order.

    Explicit names must be unique and not reserved (RewardConfigError naming the field); derived
    names that collide get a numeric suffix (`boxed_answer`, `boxed_answer-2`).
    """
    sources = spec.models.reward
    taken: set[str] = set()
    for i, source in enumerate(sources):
        if source.name is None:
            continue
        field = f"spec.models.reward[{i}].name"
        if source.name in RESERVED_NAMES:
            raise RewardConfigError(
                f"{field}: '{source.name}' is reserved (reward/{source.name} is the combined reward)"
            )
        if source.name in taken:
            raise RewardConfigError(f"{field}: '{source.name}' is used by another reward source")
        taken.add(source.name)

    names: list[str] = []
    for source in sources:
        if source.name is not None:
            names.append(source.name)
            continue
        base = derived_name(source)
        candidate, n = base, 1
        while candidate in taken or candidate in RESERVED_NAMES:
            n += 1
            candidate = f"{base}-{n}"
        taken.add(candidate)
        names.append(candidate)
    return names
