"""RLHFPipeline decisions (pure): stages start in order, each takes the exported models of the
stages it names, a Succeeded stage is never recreated, a Failed stage stops the pipeline."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from rlhf_operator.pipeline import decide, status_patch
from rlhf_trainer.api.validation import validate_manifest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tiny-pipeline-cpu.yaml"


def pipeline(status: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"].update(namespace="team-a", uid="uid-1", generation=1)
    if status is not None:
        doc["status"] = status
    return doc


def child(name: str, phase: str | None, model: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    if model:
        status["latestCheckpoint"] = {"step": 1, "path": model.rsplit("/", 1)[0], "hfPath": model}
    return {"metadata": {"name": name}, "status": status}


def test_a_new_pipeline_creates_only_its_first_stage_owned_and_labelled() -> None:
    plan = decide(pipeline(), {})
    assert [c["metadata"]["name"] for c in plan.create] == ["tiny-pipeline-cpu-sft"]
    created = plan.create[0]
    assert created["metadata"]["labels"] == {"rlhf.io/pipeline": "tiny-pipeline-cpu", "rlhf.io/stage": "sft"}
    owner = created["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("RLHFPipeline", "uid-1", True)
    assert created["metadata"]["namespace"] == "team-a"
    job, errors = validate_manifest(created)
    assert not errors and job is not None
    assert plan.status["phase"] == "Running" and plan.status["currentStage"] == "sft"
    assert [s["phase"] for s in plan.status["stages"]] == ["Pending", "Waiting", "Waiting"]
    assert plan.status["summary"] == "0/3"


def test_a_running_stage_creates_nothing_more() -> None:
    plan = decide(pipeline(), {"tiny-pipeline-cpu-sft": child("tiny-pipeline-cpu-sft", "Running")})
    assert plan.create == []
    assert plan.status["currentStage"] == "sft" and plan.status["stages"][0]["phase"] == "Running"


def test_the_next_stage_takes_the_exported_models_of_the_stages_it_names() -> None:
    children = {
        "tiny-pipeline-cpu-sft": child("tiny-pipeline-cpu-sft", "Succeeded", "/ckpt/sft/step_000010/hf"),
        "tiny-pipeline-cpu-rm": child("tiny-pipeline-cpu-rm", "Succeeded", "/ckpt/rm/step_000010/hf"),
    }
    plan = decide(pipeline(), children)
    assert [c["metadata"]["name"] for c in plan.create] == ["tiny-pipeline-cpu-rl"]
    models = plan.create[0]["spec"]["models"]
    assert models["actor"]["model"] == "/ckpt/sft/step_000010/hf"
    assert models["reward"][0]["model"] == "/ckpt/rm/step_000010/hf"
    assert plan.status["currentStage"] == "rl" and plan.status["summary"] == "2/3"
    assert plan.status["stages"][0]["model"] == "/ckpt/sft/step_000010/hf"


def test_a_succeeded_stage_whose_job_was_deleted_is_not_rerun() -> None:
    recorded = decide(
        pipeline(),
        {
            "tiny-pipeline-cpu-sft": child("tiny-pipeline-cpu-sft", "Succeeded", "/ckpt/sft/hf"),
            "tiny-pipeline-cpu-rm": child("tiny-pipeline-cpu-rm", "Running"),
        },
    ).status
    plan = decide(pipeline(recorded), {"tiny-pipeline-cpu-rm": child("tiny-pipeline-cpu-rm", "Running")})
    assert plan.create == []
    assert plan.status["stages"][0] == {
        "name": "sft",
        "job": "tiny-pipeline-cpu-sft",
        "phase": "Succeeded",
        "model": "/ckpt/sft/hf",
    }


def test_a_failed_stage_fails_the_pipeline_and_starts_nothing_after_it() -> None:
    plan = decide(
        pipeline(),
        {
            "tiny-pipeline-cpu-sft": child("tiny-pipeline-cpu-sft", "Succeeded", "/ckpt/sft/hf"),
            "tiny-pipeline-cpu-rm": child("tiny-pipeline-cpu-rm", "Failed"),
        },
    )
    assert plan.create == []
    assert plan.status["phase"] == "Failed" and plan.status["currentStage"] == "rm"
    assert [s["phase"] for s in plan.status["stages"]] == ["Succeeded", "Failed", "Waiting"]


def test_a_stage_that_succeeded_without_an_export_fails_the_stage_that_needs_it() -> None:
    plan = decide(pipeline(), {"tiny-pipeline-cpu-sft": child("tiny-pipeline-cpu-sft", "Succeeded")})
    assert plan.create == []
    assert (
        plan.status["phase"] == "Failed"
        and "'sft' succeeded without an exported model" in plan.status["message"]
    )


def test_all_stages_succeeded() -> None:
    children = {
        f"tiny-pipeline-cpu-{s}": child(f"tiny-pipeline-cpu-{s}", "Succeeded", f"/ckpt/{s}/hf")
        for s in ("sft", "rm", "rl")
    }
    plan = decide(pipeline(), children)
    assert plan.create == [] and plan.status["phase"] == "Succeeded" and plan.status["summary"] == "3/3"
    assert "currentStage" not in plan.status


def test_an_invalid_pipeline_is_failed_naming_the_field() -> None:
    doc = pipeline()
    doc["spec"]["stages"][2]["spec"]["models"]["reward"][0]["model"] = "stage://nowhere"
    plan = decide(doc, {})
    assert plan.create == [] and plan.status["phase"] == "Failed"
    assert plan.status["message"].startswith("spec.stages[2].spec.models.reward[0].model: stage://nowhere")


def test_status_patch_sets_changes_and_removes_dropped_fields() -> None:
    before = {"phase": "Running", "currentStage": "rm", "summary": "1/3"}
    after = {"phase": "Succeeded", "summary": "3/3"}
    assert status_patch(before, after) == {"phase": "Succeeded", "summary": "3/3", "currentStage": None}
    assert status_patch(after, copy.deepcopy(after)) is None


def test_an_offline_stage_places_only_its_trained_model() -> None:
    """No rollout engines (their default is vllm) and no separate reference: an sft job on 8 GPUs is
    one pod of 8 GPUs; a dpo job's reference lives in the actor's workers."""
    from rlhf_operator.placement import plan_layout

    for stem in ("sft-qwen2.5-7b", "dpo-qwen2.5-7b"):
        job, errors = validate_manifest(yaml.safe_load((ROOT / "examples" / f"{stem}.yaml").read_text()))
        assert not errors and job is not None
        layout = plan_layout(job.spec)
        assert layout.total_gpus == 8, stem
        assert [pool.roles for pool in layout.pools] == [("actor",)], stem
