"""Metric names of reward sources: `reward/<name>` in metrics.jsonl, the status and Prometheus.

Pure functions of the spec, so the telemetry can name per-source gauges without building the
sources themselves.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from ..api.spec import RESERVED_REWARD_NAMES, RewardSource, RLHFJobSpec

# reward/mean and reward/std are the totals; a source with one of these names would overwrite them.
# The API rejects such explicit names; derived names step around them.
RESERVED_NAMES = frozenset(RESERVED_REWARD_NAMES)
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

    Explicit names are unique and not reserved (the API's rules on spec.models.reward); derived
    names that collide get a numeric suffix (`boxed_answer`, `boxed_answer-2`).
    """
    sources = spec.models.reward
    taken = {source.name for source in sources if source.name is not None}

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
