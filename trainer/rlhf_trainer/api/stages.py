"""The offline stages of the alignment pipeline as algorithms of an RLHFJob: `sft`, `rm`, `dpo`
(with its `ipo` and conservative variants), `kto`.

In a stage, `spec.models.actor` is the model being trained (for `rm`, the base model a one-label
sequence-classification head is put on), `spec.data.prompts` holds the examples (the columns
named by the keys below), `spec.data.eval` the held-out split, and the batch sizes count examples:
`trainBatchSize` examples (rows, or preference pairs) per optimizer step, `microBatchSize` per
forward/backward pass, `maxSteps` optimizer steps. RL-only parts (critic, reward, samplesPerPrompt
> 1) are rejected, naming the field (rolloutBatchSize has a default and is ignored); stage-only
fields are rejected in RL jobs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import ApiModel, Rule

OfflineName = Literal["sft", "rm", "dpo", "kto"]
OFFLINE_ALGORITHMS: tuple[str, ...] = OfflineName.__args__  # type: ignore[attr-defined]
# Stages that hold a frozen reference: the actor's initial model unless models.reference is set.
REFERENCE_STAGES = ("dpo", "kto")
OFFLINE_CEL = "[" + ", ".join(f"'{name}'" for name in OFFLINE_ALGORITHMS) + "]"

# The data columns each stage reads, with their default names (the data.prompts keys).
STAGE_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "sft": (("inputKey", "prompt"), ("responseKey", "response")),
    "rm": (("inputKey", "prompt"), ("chosenKey", "chosen"), ("rejectedKey", "rejected")),
    "dpo": (("inputKey", "prompt"), ("chosenKey", "chosen"), ("rejectedKey", "rejected")),
    "kto": (("inputKey", "prompt"), ("completionKey", "completion"), ("labelKey", "label")),
}
# Keys of data.prompts/data.eval that only offline stages read, and the stages that read each.
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "responseKey": ("sft",),
    "chosenKey": ("rm", "dpo"),
    "rejectedKey": ("rm", "dpo"),
    "completionKey": ("kto",),
}


def is_offline(name: str) -> bool:
    return name in OFFLINE_ALGORITHMS


class DPOSpec(ApiModel):
    """Direct preference optimisation (Rafailov et al. 2023) and its variants."""

    beta: float = Field(
        default=0.1, gt=0, le=100, description="Strength of the implicit KL to the reference."
    )
    loss_type: Literal["sigmoid", "ipo"] = Field(
        default="sigmoid",
        description="sigmoid: DPO; ipo: the squared loss of IPO (Azar et al. 2023, on length-averaged "
        "log-probabilities).",
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0,
        le=0.5,
        description="Conservative DPO: the assumed fraction of flipped preference labels, below 0.5 "
        "(sigmoid only).",
    )

    # (< 0.5 as a rule: an exclusive non-integer maximum trips the API server's default check.)
    rules = (
        Rule(
            cel="self.labelSmoothing < 0.5",
            message="must be < 0.5 (at 0.5 the preference labels carry no information)",
            field="labelSmoothing",
            check=lambda d: d.label_smoothing < 0.5,
        ),
        Rule(
            cel="self.lossType != 'ipo' || self.labelSmoothing == 0.0",
            message="applies to lossType sigmoid only (conservative DPO), not ipo",
            field="labelSmoothing",
            check=lambda d: d.loss_type != "ipo" or d.label_smoothing == 0,
        ),
    )


class KTOSpec(ApiModel):
    """Kahneman-Tversky optimisation (Ethayarajh et al. 2024, arXiv:2402.01306) on unpaired
    desirable/undesirable completions."""

    beta: float = Field(default=0.1, gt=0, le=100, description="Scale of the implicit reward.")
    desirable_weight: float = Field(
        default=1.0, gt=0, le=100, description="Loss weight of desirable completions (label true)."
    )
    undesirable_weight: float = Field(
        default=1.0, gt=0, le=100, description="Loss weight of undesirable completions (label false)."
    )


class RewardModelStageSpec(ApiModel):
    """Pairwise (Bradley-Terry) reward-model training."""

    margin: float = Field(
        default=0.0, ge=0, le=100, description="How much the chosen reward should win by (0: plain BT)."
    )


def stage_rules() -> tuple[Rule, ...]:
    """The cross-field rules between the algorithm and the rest of an RLHFJob spec."""
    offline = f"{OFFLINE_CEL}.exists(a, a == self.algorithm.name)"
    rules = [
        Rule(
            cel=f"!({offline}) || !has(self.models.critic)",
            message="not used by offline stages (sft, rm, dpo, kto): remove it",
            field="models.critic",
            check=lambda s: not is_offline(s.algorithm.name) or s.models.critic is None,
        ),
        Rule(
            cel=f"!({offline}) || size(self.models.reward) == 0",
            message="not used by offline stages (sft, rm, dpo, kto): remove it",
            field="models.reward",
            check=lambda s: not is_offline(s.algorithm.name) or not s.models.reward,
        ),
        Rule(
            cel=f"({offline}) || size(self.models.reward) >= 1",
            message="required: at least one reward source",
            field="models.reward",
            check=lambda s: is_offline(s.algorithm.name) or len(s.models.reward) >= 1,
        ),
        Rule(
            cel="!(['sft', 'rm'].exists(a, a == self.algorithm.name)) || !has(self.models.reference)",
            message="not used by sft and rm (dpo and kto hold a reference): remove it",
            field="models.reference",
            check=lambda s: s.algorithm.name not in ("sft", "rm") or s.models.reference is None,
        ),
        Rule(
            cel=f"!({offline}) || self.algorithm.samplesPerPrompt == 1",
            message="must be 1 for offline stages (nothing is generated)",
            field="algorithm.samplesPerPrompt",
            check=lambda s: not is_offline(s.algorithm.name) or s.algorithm.samples_per_prompt == 1,
        ),
    ]
    for key, stages in STAGE_KEYS.items():
        wire = "[" + ", ".join(f"'{name}'" for name in stages) + "]"
        for source in ("prompts", "eval"):
            snake = {
                "responseKey": "response_key",
                "chosenKey": "chosen_key",
                "rejectedKey": "rejected_key",
                "completionKey": "completion_key",
            }[key]
            guard = "has(self.data.eval) && " if source == "eval" else ""
            rules.append(
                Rule(
                    cel=f"!({guard}has(self.data.{source}.{key})) || {wire}.exists(a, a == self.algorithm.name)",
                    message=f"read by {', '.join(stages)} only: remove it",
                    field=f"data.{source}.{key}",
                    check=lambda s, src=source, attr=snake, names=stages: (
                        getattr(s.data, src) is None
                        or getattr(getattr(s.data, src), attr) is None
                        or s.algorithm.name in names
                    ),
                )
            )
    return tuple(rules)


ALGORITHM_STAGE_RULES = (
    Rule(
        cel="self.name == 'dpo' || !has(self.dpo)",
        message="applies to algorithm dpo only: remove it",
        field="dpo",
        check=lambda a: a.name == "dpo" or a.dpo is None,
    ),
    Rule(
        cel="self.name == 'kto' || !has(self.kto)",
        message="applies to algorithm kto only: remove it",
        field="kto",
        check=lambda a: a.name == "kto" or a.kto is None,
    ),
    Rule(
        cel="self.name == 'rm' || !has(self.rewardModel)",
        message="applies to algorithm rm only: remove it",
        field="rewardModel",
        check=lambda a: a.name == "rm" or a.reward_model is None,
    ),
)


def layout_view(spec: Any) -> Any:
    """The spec as the role layout should see it: an offline stage runs only its trained model's
    workers (the reference of dpo/kto lives in the same process; nothing generates), so the RL
    parts that have defaults (the rollout engines) and the reference are left out."""
    if not is_offline(spec.algorithm.name):
        return spec
    from .spec import KLSpec, RolloutSpec

    models = spec.models.model_copy(
        update={"rollout": RolloutSpec(engine="hf", engines=0), "reference": None}
    )
    # No KL term either, so no default reference role is derived from it.
    algorithm = spec.algorithm.model_copy(update={"kl": KLSpec(coef=0.0)})
    return spec.model_copy(update={"models": models, "algorithm": algorithm})
