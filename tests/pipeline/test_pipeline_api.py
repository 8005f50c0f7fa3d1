"""The RLHFPipeline API: stage references are checked, the CRD is derived and in sync, and the
stage algorithms' own fields are judged (the RLHFJob side is in tests/api)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from rlhf_trainer.api.pipeline import pipeline_crd_manifest, render_pipeline_crd
from rlhf_trainer.api.validation import validate_manifest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "examples" / "tiny-pipeline-cpu.yaml").read_text())


def errors_of(doc: dict) -> list[str]:
    return [str(e) for e in validate_manifest(doc)[1]]


def test_the_tiny_pipeline_is_valid() -> None:
    pipeline, errors = validate_manifest(copy.deepcopy(EXAMPLE))
    assert not errors and pipeline is not None
    assert [s.name for s in pipeline.spec.stages] == ["sft", "rm", "rl"]


def test_a_reference_to_a_later_or_unknown_stage_is_rejected() -> None:
    doc = copy.deepcopy(EXAMPLE)
    doc["spec"]["stages"][0]["spec"]["models"]["actor"]["model"] = "stage://rm"
    assert errors_of(doc) == [
        "spec.stages[0].spec.models.actor.model: stage://rm: no earlier stage named 'rm'"
    ]


def test_a_reward_model_must_come_from_an_rm_stage_and_an_actor_not() -> None:
    doc = copy.deepcopy(EXAMPLE)
    doc["spec"]["stages"][2]["spec"]["models"]["reward"][0]["model"] = "stage://sft"
    doc["spec"]["stages"][2]["spec"]["models"]["actor"]["model"] = "stage://rm"
    errors = errors_of(doc)
    assert any(
        e.startswith(
            "spec.stages[2].spec.models.reward[0].model: stage://sft: a reward model comes from an rm"
        )
        for e in errors
    ), errors
    assert any(
        e.startswith("spec.stages[2].spec.models.actor.model: stage://rm: stage 'rm' trains a reward model")
        for e in errors
    ), errors


def test_a_referenced_stage_must_export_its_model() -> None:
    doc = copy.deepcopy(EXAMPLE)
    doc["spec"]["stages"][0]["spec"]["checkpoint"]["exportHF"] = False
    assert any("stage 'sft' exports no model" in e for e in errors_of(doc))


def test_a_referenced_stage_must_not_export_to_object_storage() -> None:
    doc = copy.deepcopy(EXAMPLE)
    doc["spec"]["stages"][0]["spec"]["checkpoint"].update(
        path="s3://checkpoints/pipeline/sft", s3={"secretRef": {"name": "checkpoint-store"}}
    )
    errors = errors_of(doc)
    assert any(
        e.startswith(
            "spec.stages[1].spec.models.actor.model: stage://sft: stage 'sft' exports to object storage"
        )
        for e in errors
    ), errors


def test_stage_names_are_unique_and_bounded() -> None:
    doc = copy.deepcopy(EXAMPLE)
    doc["spec"]["stages"][1]["name"] = "sft"
    assert errors_of(doc) == ["spec.stages: stage names must be unique"]
    doc = copy.deepcopy(EXAMPLE)
    doc["metadata"]["name"] = "a" * 25
    assert any(e.startswith("metadata.name:") for e in errors_of(doc))


def test_stage_errors_name_the_field_inside_the_stage() -> None:
    doc = copy.deepcopy(EXAMPLE)
    doc["spec"]["stages"][0]["spec"]["models"]["critic"] = {"model": "/m"}
    assert (
        "spec.stages[0].spec.models.critic: not used by offline stages (sft, rm, dpo, kto): remove it"
        in errors_of(doc)
    )


def test_pipeline_crd_is_in_sync_and_carries_the_printer_columns() -> None:
    for directory in ("crds", "helm/rlhf-operator/crds"):
        assert (ROOT / directory / "rlhfpipelines.rlhf.io.yaml").read_text() == render_pipeline_crd(), (
            f"{directory} is stale: run `make crds`"
        )
    version = pipeline_crd_manifest()["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Phase", "Stage", "Done", "Age"]
    stages = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["stages"]
    assert stages["maxItems"] == 8
    assert "algorithm" in stages["items"]["properties"]["spec"]["properties"]
