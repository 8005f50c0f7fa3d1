"""`rlhf validate` notes what a valid job will do wrong on a cluster (hints.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from rlhf_trainer.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write(tmp_path: Path, stem: str, edit) -> Path:
    doc = yaml.safe_load((EXAMPLES / f"{stem}.yaml").read_text())
    edit(doc["spec"])
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_model_path_on_no_mounted_volume_is_noted_and_still_valid(tmp_path: Path, capsys):
    path = write(tmp_path, "grpo-qwen2.5-7b-math", lambda s: s["template"].pop("volumeMounts"))
    assert main(["validate", str(path)]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if ": note: " in line]
    assert [n.split(": note: ")[1].split(":")[0] for n in notes] == [
        "spec.models.actor.model",
        "spec.models.reference.model",
        "spec.data.prompts.path",
    ]
    assert "/models/qwen2.5-7b-instruct is on no volume the pods mount" in notes[0]


def test_hub_models_without_a_cache_are_noted_and_the_cache_silences_it(tmp_path: Path, capsys):
    example = EXAMPLES / "smoke-grpo-qwen2.5-0.5b.yaml"
    assert main(["validate", str(example)]) == 0
    assert (
        "note: spec.modelCache: unset, so every pod downloads Qwen/Qwen2.5-0.5B-Instruct"
        in capsys.readouterr().out
    )
    cached = write(
        tmp_path, "smoke-grpo-qwen2.5-0.5b", lambda s: s.update(modelCache={"claimName": "hf-cache"})
    )
    assert main(["validate", str(cached)]) == 0
    assert "note:" not in capsys.readouterr().out


def test_the_examples_have_no_notes_but_the_smoke_tests_cache(capsys):
    assert main(["validate", *map(str, sorted(EXAMPLES.glob("*.yaml")))]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if ": note: " in line]
    assert [n.split(":")[0] for n in notes] == [str(EXAMPLES / "smoke-grpo-qwen2.5-0.5b.yaml")]
