"""RLHFPipeline decisions, as pure functions of the pipeline and its child RLHFJobs.

One child RLHFJob per stage, `<pipeline>-<stage>`, labelled rlhf.io/pipeline and rlhf.io/stage and
owned by the pipeline. Stages run in order: the next child is created only when every earlier one
has Succeeded, with each `stage://<name>` model path replaced by that stage's exported HF model
(`status.latestCheckpoint.hfPath` of its RLHFJob). A Succeeded stage is never rerun: its child
RLHFJob says so, and the pipeline's status keeps it (with its model) should the child be deleted.
A Failed stage fails the pipeline; later stages are not started. All state lives in the children
and the pipeline's status, so a restarted operator continues where it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlhf_trainer.api.job import API_VERSION, KIND
from rlhf_trainer.api.pipeline import (
    LABEL_PIPELINE,
    LABEL_STAGE,
    PIPELINE_KIND,
    child_job_name,
    resolve_references,
    validate_pipeline,
)

WAITING = "Waiting"


@dataclass
class PipelinePlan:
    status: dict[str, Any]
    """The pipeline's status as it should read."""
    create: list[dict[str, Any]] = field(default_factory=list)
    """Child RLHFJobs to create (at most one: the next stage)."""


def _child_phase(child: dict[str, Any]) -> str:
    return (child.get("status") or {}).get("phase") or "Pending"


def _child_model(child: dict[str, Any]) -> str | None:
    return ((child.get("status") or {}).get("latestCheckpoint") or {}).get("hfPath")


def child_manifest(pipeline: dict[str, Any], stage_name: str, spec: dict[str, Any]) -> dict[str, Any]:
    meta = pipeline["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": child_job_name(meta["name"], stage_name),
            "namespace": meta.get("namespace"),
            "labels": {LABEL_PIPELINE: meta["name"], LABEL_STAGE: stage_name},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": PIPELINE_KIND,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def decide(pipeline: dict[str, Any], children: dict[str, dict[str, Any]]) -> PipelinePlan:
    """What to create and the status to write. `children`: the pipeline's RLHFJobs by name."""
    meta = pipeline["metadata"]
    previous = pipeline.get("status") or {}
    generation = meta.get("generation")
    body = {k: v for k, v in pipeline.items() if k != "status"}
    parsed, errors = validate_pipeline(body)
    if parsed is None:
        message = "; ".join(str(e) for e in errors)
        return PipelinePlan(
            status={
                **_keep(previous),
                "phase": "Failed",
                "message": message,
                "observedGeneration": generation,
            }
        )
    recorded = {s.get("name"): s for s in previous.get("stages") or []}
    stages = parsed.spec.stages
    rows: list[dict[str, Any]] = []
    exported: dict[str, str | None] = {}
    create: list[dict[str, Any]] = []
    phase, current, message = "Succeeded", None, f"all {len(stages)} stage(s) succeeded"
    for index, stage in enumerate(stages):
        job = child_job_name(meta["name"], stage.name)
        child = children.get(job)
        record = recorded.get(stage.name) or {}
        if child is not None:
            row = {"name": stage.name, "job": job, "phase": _child_phase(child), "model": _child_model(child)}
        elif record.get("phase") == "Succeeded":
            row = {"name": stage.name, "job": job, "phase": "Succeeded", "model": record.get("model")}
        else:
            try:
                spec = resolve_references(stage.spec.to_wire(), exported)
            except KeyError as exc:
                row = {"name": stage.name, "job": job, "phase": "Failed"}
                rows.append(row)
                phase, current = "Failed", stage.name
                message = (
                    f"stage {stage.name}: stage {exc.args[0]!r} succeeded without an exported model "
                    f"(status.latestCheckpoint.hfPath)"
                )
                break
            create.append(child_manifest(pipeline, stage.name, spec))
            row = {"name": stage.name, "job": job, "phase": "Pending"}
        rows.append(row)
        if row["phase"] == "Succeeded":
            exported[stage.name] = row.get("model")
            continue
        current = stage.name
        if row["phase"] == "Failed":
            phase, message = "Failed", f"stage {stage.name} failed (RLHFJob {job}); later stages not started"
        else:
            phase, message = "Running", f"stage {index + 1}/{len(stages)}: {stage.name} ({row['phase']})"
        break
    rows += [{"name": s.name, "phase": WAITING} for s in stages[len(rows) :]]
    done = sum(r["phase"] == "Succeeded" for r in rows)
    status = {
        "phase": phase,
        "currentStage": current,
        "summary": f"{done}/{len(stages)}",
        "stages": [{k: v for k, v in r.items() if v is not None} for r in rows],
        "message": message,
        "observedGeneration": generation,
    }
    return PipelinePlan(status={k: v for k, v in status.items() if v is not None}, create=create)


def _keep(previous: dict[str, Any]) -> dict[str, Any]:
    return {k: previous[k] for k in ("stages", "summary", "currentStage") if k in previous}


def status_patch(previous: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any] | None:
    """A merge patch from `previous` to `wanted` (None when nothing changes); fields `wanted`
    drops are removed."""
    patch = {k: v for k, v in wanted.items() if previous.get(k) != v}
    patch.update({k: None for k in previous if k not in wanted})
    return patch or None
