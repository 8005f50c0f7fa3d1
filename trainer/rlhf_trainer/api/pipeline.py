"""The RLHFPipeline resource: ordered stages (e.g. sft -> rm -> ppo), each an RLHFJob spec, where a
model path `stage://<name>` takes an earlier stage's exported HF model.

The operator runs one child RLHFJob per stage, `<pipeline>-<stage>`, in order; `rlhf run` runs the
same stages on this machine. A stage is never rerun once Succeeded: its child RLHFJob (and the
pipeline's status) hold that, so an operator restart or a later stage's failure does not redo it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .base import ApiModel, Rule
from .job import API_VERSION, NAME_PATTERN
from .spec import RLHFJobSpec
from .validation import FieldError, parse_model

PIPELINE_KIND = "RLHFPipeline"
PIPELINE_PLURAL = "rlhfpipelines"
PIPELINE_SINGULAR = "rlhfpipeline"
PIPELINE_SHORT_NAMES = ("rlhfp",)
STAGE_REF = "stage://"
# A child RLHFJob is named <pipeline>-<stage> and RLHFJob names stop at 40 characters.
MAX_PIPELINE_NAME = 24
MAX_STAGE_NAME = 15
MAX_STAGES = 8
LABEL_PIPELINE = "rlhf.io/pipeline"
LABEL_STAGE = "rlhf.io/stage"

PipelinePhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class PipelineStage(ApiModel):
    name: str = Field(
        pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
        max_length=MAX_STAGE_NAME,
        description="Stage name: the child RLHFJob is <pipeline>-<name>; later stages refer to its model "
        "as stage://<name>.",
    )
    spec: RLHFJobSpec = Field(
        description="The stage's RLHFJob spec. Any model path (actor, reference, critic, reward model, "
        "tokenizer) may be stage://<earlier stage>: that stage's exported HF model."
    )


class RLHFPipelineSpec(ApiModel):
    stages: list[PipelineStage] = Field(
        min_length=1, max_length=MAX_STAGES, description="Stages, run one after another in this order."
    )

    rules = (
        Rule(
            cel="self.stages.all(a, self.stages.exists_one(b, b.name == a.name))",
            message="stage names must be unique",
            field="stages",
            check=lambda p: len({s.name for s in p.stages}) == len(p.stages),
        ),
    )


class StageStatus(ApiModel):
    name: str = Field(description="Stage name.")
    job: str | None = Field(default=None, description="The stage's RLHFJob.")
    phase: str = Field(
        description="Waiting (not started), or the RLHFJob's phase (Pending ... Succeeded, Failed)."
    )
    model: str | None = Field(default=None, description="The stage's exported HF model once Succeeded.")


class RLHFPipelineStatus(ApiModel):
    phase: PipelinePhase | None = Field(default=None, description="Pending, Running, Succeeded or Failed.")
    current_stage: str | None = Field(default=None, description="The stage running now (or that failed).")
    summary: str | None = Field(
        default=None, description="Succeeded stages / all stages, shown by kubectl get."
    )
    stages: list[StageStatus] = Field(
        default_factory=list, max_length=MAX_STAGES, description="Per-stage state."
    )
    message: str | None = Field(default=None, description="Latest human-readable message.")
    observed_generation: int | None = Field(default=None, description="Spec generation last reconciled.")


class PipelineMeta(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_PIPELINE_NAME, description="Pipeline name.")
    namespace: str | None = Field(default=None, description="Namespace.")


class RLHFPipeline(ApiModel):
    api_version: Literal["rlhf.io/v1alpha1"] = Field(alias="apiVersion", description="rlhf.io/v1alpha1")
    kind: Literal["RLHFPipeline"] = Field(description="RLHFPipeline")
    metadata: PipelineMeta = Field(description="Standard object metadata.")
    spec: RLHFPipelineSpec = Field(description="The stages.")
    status: RLHFPipelineStatus | None = Field(default=None, description="Observed state.")


# --------------------------------------------------------------------------------------------
# stage references


def model_fields(spec: RLHFJobSpec) -> list[tuple[str, str, str]]:
    """(wire path under the stage's spec, value, kind) of every model path; kind is the role
    (actor, reference, critic, reward, tokenizer)."""
    models = spec.models
    out = [("models.actor.model", models.actor.model, "actor")]
    if models.actor.tokenizer:
        out.append(("models.actor.tokenizer", models.actor.tokenizer, "tokenizer"))
    for name in ("critic", "reference"):
        role = getattr(models, name)
        if role is not None:
            out.append((f"models.{name}.model", role.model, name))
    out += [(f"models.reward[{i}].model", s.model, "reward") for i, s in enumerate(models.reward) if s.model]
    return out


def referenced_stage(value: str) -> str | None:
    return value[len(STAGE_REF) :] if value.startswith(STAGE_REF) else None


def reference_errors(spec: RLHFPipelineSpec) -> list[FieldError]:
    """Every stage://name names an earlier stage that exports a model of the right kind: a reward
    model (rm) for reward and critic, a language model (not rm) for actor, reference, tokenizer."""
    errors = []
    earlier: dict[str, RLHFJobSpec] = {}
    for index, stage in enumerate(spec.stages):
        for path, value, kind in model_fields(stage.spec):
            name = referenced_stage(value)
            if name is None:
                continue
            field = f"spec.stages[{index}].spec.{path}"
            source = earlier.get(name)
            if source is None:
                errors.append(FieldError(field, f"{value}: no earlier stage named {name!r}"))
            elif source.checkpoint is None or not source.checkpoint.export_hf:
                errors.append(
                    FieldError(
                        field,
                        f"{value}: stage {name!r} exports no model (set its checkpoint with exportHF: true)",
                    )
                )
            elif source.checkpoint.path.startswith("s3://"):
                errors.append(
                    FieldError(
                        field,
                        f"{value}: stage {name!r} exports to object storage ({source.checkpoint.path}), which a "
                        "later stage cannot load a model from yet: give that stage a checkpoint directory",
                    )
                )
            elif kind == "reward" and source.algorithm.name != "rm":
                errors.append(
                    FieldError(
                        field,
                        f"{value}: a reward model comes from an rm stage, "
                        f"{name!r} is {source.algorithm.name}",
                    )
                )
            elif kind in ("actor", "reference", "tokenizer") and source.algorithm.name == "rm":
                errors.append(
                    FieldError(field, f"{value}: stage {name!r} trains a reward model, not a language model")
                )
        earlier[stage.name] = stage.spec
    return errors


def resolve_references(stage_spec: dict[str, Any], exported: dict[str, str | None]) -> dict[str, Any]:
    """The stage's spec (wire form) with each stage://name replaced by that stage's exported model.
    KeyError names a stage whose model is not known."""
    models = dict(stage_spec.get("models", {}))

    def fix(value: Any) -> Any:
        name = referenced_stage(value) if isinstance(value, str) else None
        if name is None:
            return value
        path = exported.get(name)
        if not path:
            raise KeyError(name)
        return path

    for role in ("actor", "critic", "reference"):
        if isinstance(models.get(role), dict):
            models[role] = {k: fix(v) if k in ("model", "tokenizer") else v for k, v in models[role].items()}
    if isinstance(models.get("reward"), list):
        models["reward"] = [
            {k: fix(v) if k == "model" else v for k, v in s.items()} for s in models["reward"]
        ]
    return {**stage_spec, "models": models}


def child_job_name(pipeline: str, stage: str) -> str:
    return f"{pipeline}-{stage}"


def validate_pipeline(doc: Any) -> tuple[RLHFPipeline | None, list[FieldError]]:
    """Parse one RLHFPipeline manifest: schema and rules, then the stage references."""
    if doc.get("apiVersion") != API_VERSION:
        return None, [FieldError("apiVersion", f"must be {API_VERSION}, got {doc.get('apiVersion')}")]
    pipeline, errors = parse_model(RLHFPipeline, doc)
    if errors:
        return None, errors
    errors = reference_errors(pipeline.spec)
    return (None, errors) if errors else (pipeline, [])


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Pipeline phase."},
    {"name": "Stage", "type": "string", "jsonPath": ".status.currentStage", "description": "Current stage."},
    {"name": "Done", "type": "string", "jsonPath": ".status.summary", "description": "Succeeded/all stages."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def pipeline_crd_manifest() -> dict[str, Any]:
    from .crd import _without_defaults, crd_document, model_schema

    root = {
        "type": "object",
        "description": "Ordered RLHF stages (e.g. sft -> rm -> ppo), each run as an RLHFJob that may take an "
        "earlier stage's exported model.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": API_VERSION},
            "kind": {"type": "string", "description": PIPELINE_KIND},
            "metadata": {"type": "object"},
            "spec": model_schema(RLHFPipelineSpec, "The stages, run in order."),
            "status": _without_defaults(
                model_schema(RLHFPipelineStatus, "Observed state, written by the operator.")
            ),
        },
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.size() <= {MAX_PIPELINE_NAME}",
                "message": f"metadata.name must be at most {MAX_PIPELINE_NAME} characters "
                "(each stage's RLHFJob is named <pipeline>-<stage>)",
            }
        ],
    }
    # Categories: not "rlhf", that is RLHFJob's short name (kubectl get rlhf).
    return crd_document(
        PIPELINE_KIND,
        PIPELINE_PLURAL,
        PIPELINE_SINGULAR,
        PIPELINE_SHORT_NAMES,
        ("all",),
        root,
        PRINTER_COLUMNS,
    )


def render_pipeline_crd() -> str:
    import yaml

    header = "# Generated by `make crds` (rlhf crds --kind RLHFPipeline) from rlhf_trainer.api. Do not edit by hand.\n"
    return header + yaml.safe_dump(pipeline_crd_manifest(), sort_keys=False, width=120)
