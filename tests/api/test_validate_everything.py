"""`rlhf validate` says everything at once; `--show-defaults` and `rlhf render --layout` show what
the job will run with."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rlhf_operator.placement import plan_layout
from rlhf_trainer.api.layout import with_defaults
from rlhf_trainer.api.spec import (
    DEFAULT_MAX_STEPS,
    DEFAULT_MICRO_BATCH_SIZE,
    DEFAULT_ROLLOUT_BATCH_SIZE,
    DEFAULT_TRAIN_BATCH_SIZE,
)
from rlhf_trainer.api.validation import validate_manifest
from rlhf_trainer.cli import main

ROOT = Path(__file__).resolve().parents[2]

SEVERAL_MISTAKES = """
apiVersion: rlhf.io/v1alpha1
kind: RLHFJob
metadata: {name: Bad_Name}
spec:
  algorithm: {name: grpo, samplesPerPrompt: 4}
  models:
    actor: {model: /m, gpus: 2}
    critic: {model: /c, gpus: 2}
    reward:
      - {name: a, function: "m:f", url: "http://x"}
      - {name: a, function: "m:g"}
  queueName: Team_A
  priorityClassName: "High Priority"
  template:
    labels: {"bad key!": v}
  secrets:
    hfToken: {name: HF, key: token}
"""


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_several_independent_mistakes_are_reported_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mistakes.yaml"
    path.write_text(SEVERAL_MISTAKES)
    code, _, err = _run(capsys, "validate", str(path))
    assert code == 1
    fields = [line.split(": ", 1)[0] for line in err.splitlines()]
    assert sorted(fields) == sorted(
        [
            "metadata.name",
            "spec.data",  # the missing section ...
            "spec.models.critic",  # ... does not hide the critic of a grpo job,
            "spec.models.reward[0]",  # two sources in one entry,
            "spec.models.reward",  # two entries with one name,
            "spec.queueName",  # or any malformed Kubernetes name or label
            "spec.priorityClassName",
            "spec.template.labels",
            "spec.secrets.hfToken.name",
        ]
    )


def test_a_rule_is_not_judged_on_a_field_that_is_itself_invalid(tmp_path: Path) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "grpo-qwen2.5-7b-math.yaml").read_text())
    doc["spec"]["algorithm"]["samplesPerPrompt"] = "eight"  # invalid: the group-size rule must stay quiet
    del doc["spec"]["data"]
    _, errors = validate_manifest(doc)
    assert sorted(e.path for e in errors) == ["spec.algorithm.samplesPerPrompt", "spec.data"]


def test_validate_reports_what_the_operator_cannot_pack_into_pods(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "grpo-qwen2.5-7b-math.yaml").read_text())
    doc["spec"]["workers"] = {"gpusPerPod": 3}  # actor 4 on pods of 3
    path = tmp_path / "unplaceable.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, _, err = _run(capsys, "validate", str(path))
    assert code == 1
    assert err.startswith("spec.models.actor.gpus: 4 GPUs cannot be placed on pods of 3 GPUs")


def test_training_may_be_omitted_and_gets_documented_defaults() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "grpo-qwen2.5-7b-math.yaml").read_text())
    del doc["spec"]["training"]
    job, errors = validate_manifest(doc)
    assert errors == [] and job is not None
    training = job.spec.training
    assert (training.rollout_batch_size, training.train_batch_size, training.micro_batch_size) == (
        DEFAULT_ROLLOUT_BATCH_SIZE,
        DEFAULT_TRAIN_BATCH_SIZE,
        DEFAULT_MICRO_BATCH_SIZE,
    )
    assert training.max_steps == DEFAULT_MAX_STEPS
    for name, value in (("rolloutBatchSize", 128), ("trainBatchSize", 64), ("maxSteps", 500)):
        field = type(training).model_fields[
            {
                "rolloutBatchSize": "rollout_batch_size",
                "trainBatchSize": "train_batch_size",
                "maxSteps": "max_steps",
            }[name]
        ]
        assert f"Default {value}." in (field.description or ""), name


def test_show_defaults_prints_the_full_spec_including_the_default_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "grpo-qwen2.5-7b-math.yaml").read_text())
    del doc["spec"]["models"]["reference"]
    del doc["spec"]["training"]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, out, _ = _run(capsys, "validate", "--show-defaults", str(path))
    assert code == 0
    (full,) = [d for d in yaml.safe_load_all(out) if d]
    models = full["spec"]["models"]
    assert models["reference"]["model"] == doc["spec"]["models"]["actor"]["model"]
    assert models["reference"]["gpus"] == doc["spec"]["models"]["actor"]["gpus"]
    assert models["colocate"]["actorReference"] is True
    assert full["spec"]["training"]["rolloutBatchSize"] == DEFAULT_ROLLOUT_BATCH_SIZE
    assert full["spec"]["generation"]["topP"] == 1.0
    # Fed back, the printed spec runs the same layout as the original.
    printed, errors = validate_manifest(full)
    original, _ = validate_manifest(doc)
    assert errors == [] and printed is not None and original is not None
    assert printed.spec == with_defaults(original.spec)
    assert plan_layout(printed.spec).groups == plan_layout(original.spec).groups


def test_render_shows_the_layout_it_decided(capsys: pytest.CaptureFixture[str]) -> None:
    example = str(ROOT / "examples" / "ppo-llama3-8b.yaml")
    code, out, _ = _run(capsys, "render", "--layout", example)
    assert code == 0
    assert "  reward_model_0: 2 worker(s) x 1 GPU, 2 GPUs  (spec.models.reward[0].gpus)" in out
    assert "  gpu8: 2 pod(s) x 8 GPUs" in out
    code, out, _ = _run(capsys, "render", example)
    assert code == 0
    assert out.startswith("# Layout of ppo-llama3-8b")
    assert "#   critic: 4 worker(s) x 1 GPU, 4 GPUs" in out
    assert [d["kind"] for d in yaml.safe_load_all(out)][-1] == "RayJob"
