"""The reward sources of a job, combined with their weights."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..api.spec import RewardSource, RLHFJobSpec, reward_auth_env
from .errors import RewardConfigError, RewardError
from .function import FunctionReward
from .naming import reward_source_names
from .remote import RemoteReward

TextScorer = Callable[[list[str]], Sequence[float]]


class Source(Protocol):
    field: str

    def preflight(self) -> None: ...

    def __call__(self, prompts: list[str], completions: list[str], labels: list[Any]) -> Sequence[float]: ...

    def describe(self) -> str: ...


class ModelReward:
    """A reward model scoring prompt + completion. The scorer is either injected (the reward-model
    role on Ray) or a RewardModelScorer built in this process on first use (local backend)."""

    def __init__(
        self,
        spec: RewardSource,
        field: str,
        scorer: TextScorer | None = None,
        device: str | None = None,
    ) -> None:
        assert spec.model is not None
        self.path = spec.model
        self.field = field
        self._precision = spec.precision
        self._device = device
        self._scorer = scorer

    def preflight(self) -> None:
        if self._scorer is not None:
            return
        import torch

        from .model import RewardModelScorer

        device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        # Unset precision: bf16 on a GPU (the field's default) and fp32 on CPU, where bf16 is slow.
        precision = self._precision or ("bf16" if device.startswith("cuda") else "fp32")
        try:
            self._scorer = RewardModelScorer(self.path, precision=precision, device=device).score
        except Exception as exc:
            raise RewardConfigError(
                f"{self.field}: cannot load reward model '{self.path}': {type(exc).__name__}: {exc}"
            ) from exc

    def __call__(self, prompts: list[str], completions: list[str], labels: list[Any]) -> Sequence[float]:
        self.preflight()
        assert self._scorer is not None
        return self._scorer([p + c for p, c in zip(prompts, completions, strict=True)])

    def describe(self) -> str:
        return f"reward model {self.path}"


@dataclass(frozen=True)
class WeightedSource:
    name: str
    weight: float
    source: Source


@dataclass
class RewardResult:
    """`total[j]` = sum over sources of weight x score; `per_source[name]` holds unweighted scores."""

    total: list[float]
    per_source: dict[str, list[float]] = field(default_factory=dict)

    def source_means(self) -> dict[str, float]:
        """{"reward/<name>": mean unweighted score} for the step's metrics."""
        return {f"reward/{name}": sum(v) / len(v) for name, v in self.per_source.items() if v}


class RewardSet:
    def __init__(self, sources: list[WeightedSource]) -> None:
        if not sources:
            raise ValueError("a RewardSet needs at least one source")
        self.sources = sources

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    def preflight(self) -> None:
        """Import functions, reach servers, load in-process reward models. Raises one
        RewardConfigError listing every failing source, one line each, field path first."""
        errors: list[str] = []
        for weighted in self.sources:
            try:
                weighted.source.preflight()
            except RewardConfigError as exc:
                errors.append(str(exc))
        if errors:
            raise RewardConfigError("\n".join(errors))

    def score(
        self, prompts: list[str], completions: list[str], labels: list[Any] | None = None
    ) -> RewardResult:
        n = len(completions)
        if labels is None:
            labels = [None] * n
        if len(prompts) != n or len(labels) != n:
            raise ValueError(
                f"score() needs one prompt and label per completion: got {len(prompts)} prompts, "
                f"{n} completions, {len(labels)} labels"
            )
        total = [0.0] * n
        per_source: dict[str, list[float]] = {}
        for weighted in self.sources:
            raw = weighted.source(list(prompts), list(completions), list(labels))
            scores = _check_scores(raw, n, weighted)
            per_source[weighted.name] = scores
            for j, value in enumerate(scores):
                total[j] += weighted.weight * value
        return RewardResult(total=total, per_source=per_source)


def _check_scores(raw: Any, n: int, weighted: WeightedSource) -> list[float]:
    where = f"{weighted.source.field} ({weighted.source.describe()})"
    if hasattr(raw, "tolist"):  # numpy arrays and torch tensors
        raw = raw.tolist()
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise RewardError(f"{where}: returned {type(raw).__name__}; expected a list of {n} floats")
    if len(raw) != n:
        raise RewardError(f"{where}: returned {len(raw)} rewards for {n} completions")
    scores: list[float] = []
    for j, value in enumerate(raw):
        if isinstance(value, (str, bytes)) or value is None:
            raise RewardError(f"{where}: reward {j} is {value!r}; rewards must be numbers")
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise RewardError(f"{where}: reward {j} is {value!r}; rewards must be numbers") from exc
        if not math.isfinite(number):
            raise RewardError(f"{where}: reward {j} is {number}; rewards must be finite")
        scores.append(number)
    return scores


def build_rewards(
    spec: RLHFJobSpec,
    model_scorers: dict[int, TextScorer] | None = None,
    device: str | None = None,
    remote_max_batch: int = 256,
) -> RewardSet:
    """One source per `spec.models.reward[i]`, named as `reward_source_names` says.

    `model_scorers[i]` scores texts for a `model` entry i (the reward-model role on Ray); entries
    without one get a RewardModelScorer in this process on `device` (default cuda if present).
    Nothing is imported, contacted or loaded until `preflight()` or the first `score()`.
    """
    model_scorers = model_scorers or {}
    names = reward_source_names(spec)
    sources: list[WeightedSource] = []
    for i, (entry, name) in enumerate(zip(spec.models.reward, names, strict=True)):
        base = f"spec.models.reward[{i}]"
        source: Source
        if entry.function is not None:
            source = FunctionReward(entry.function, f"{base}.function")
        elif entry.url is not None:
            source = RemoteReward(
                entry.url,
                f"{base}.url",
                timeout_s=entry.timeout_seconds,
                retries=entry.retries,
                max_batch=remote_max_batch,
                auth=entry.auth,
                auth_env=reward_auth_env(i) if entry.auth is not None else None,
            )
        else:
            source = ModelReward(entry, f"{base}.model", scorer=model_scorers.get(i), device=device)
        sources.append(WeightedSource(name=name, weight=entry.weight, source=source))
    unknown = sorted(set(model_scorers) - {i for i, e in enumerate(spec.models.reward) if e.model})
    if unknown:
        raise ValueError(f"model_scorers given for reward entries without a model: {unknown}")
    return RewardSet(sources)
