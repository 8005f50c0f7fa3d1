"""A KL term without `models.reference` trains against a frozen copy of the actor's initial model,
placed with the actor: on real Ray and DeepSpeed, on CPU."""

from __future__ import annotations

from pathlib import Path

from rlhf_trainer.api.validation import validate_manifest
from rlhf_trainer.backends.placement import plan_placement

from .helpers import manifest, metrics, run


def test_grpo_with_kl_and_no_reference_trains_against_the_actors_initial_model(
    demo_assets: dict, tiny_rewards: str, ray_cluster: None, tmp_path: Path
) -> None:
    doc = manifest(
        demo_assets["model"],
        demo_assets["prompts"],
        "grpo",
        {"algorithm": {"kl": {"coef": 0.1, "estimator": "k3", "asLoss": True}}, "training": {"maxSteps": 2}},
    )
    assert "reference" not in doc["spec"]["models"]
    job, errors = validate_manifest(doc)
    assert errors == [] and job is not None
    plan = plan_placement(job.spec, cpus=2.0)
    assert plan.roles["reference"][0].bundle == plan.roles["actor"][0].bundle  # placed with the actor

    assert run(doc, tmp_path / "out", backend="ray") == 0
    rows = metrics(tmp_path / "out")
    assert [row["step"] for row in rows] == [1, 2]
    assert all(row["timing/reference_s"] > 0 for row in rows)  # the reference really scored
    # Step 1 samples from the initial weights the reference holds: no divergence yet. After one
    # update the actor has moved and the frozen reference has not.
    assert abs(rows[0]["kl/mean"]) < 1e-6
    assert rows[1]["kl/mean"] > 1e-6 and rows[1]["actor/kl_loss"] > 0
