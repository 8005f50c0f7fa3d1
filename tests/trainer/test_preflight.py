"""Bad input fails before training, exit code 1, one stderr line naming the field; nothing starts.
The one thing written is status.failure, marked permanent: no restart can fix a bad spec."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .helpers import manifest, run


def assert_fails_before_training(
    doc: dict, output: Path, capsys: pytest.CaptureFixture, *lines: str, backend: str = "local"
) -> None:
    assert run(doc, output, backend=backend) == 1
    err = capsys.readouterr().err
    for line in lines:
        assert line in err, err
    assert sorted(p.name for p in output.iterdir()) == ["status.json"], "only the failure may be written"
    failure = json.loads((output / "status.json").read_text())["failure"]
    assert failure["permanent"] is True and failure["reason"] == "PreflightFailed" and failure["attempt"] == 0
    for line in lines:
        assert line in failure["message"]


def test_missing_model_path(demo_assets: dict, tiny_rewards: str, output: Path, capsys) -> None:
    doc = manifest("/nonexistent/tiny-model", demo_assets["prompts"])
    assert_fails_before_training(
        doc, output, capsys, "spec.models.actor.model: /nonexistent/tiny-model does not exist"
    )


def test_unimportable_reward_function(demo_assets: dict, output: Path, capsys) -> None:
    doc = manifest(
        demo_assets["model"],
        demo_assets["prompts"],
        "grpo",
        {"models": {"reward": [{"function": "no_such_module_xyz:score"}]}},
    )
    assert_fails_before_training(
        doc, output, capsys, "spec.models.reward[0].function: cannot import module 'no_such_module_xyz'"
    )


def test_unreachable_reward_server(demo_assets: dict, output: Path, capsys) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/score"
    doc = manifest(
        demo_assets["model"], demo_assets["prompts"], "grpo", {"models": {"reward": [{"url": url}]}}
    )
    assert_fails_before_training(doc, output, capsys, f"spec.models.reward[0].url: {url} unreachable")


def test_absent_dataset_key(demo_assets: dict, tiny_rewards: str, output: Path, capsys) -> None:
    doc = manifest(
        demo_assets["model"], demo_assets["prompts"], "grpo", {"data": {"prompts": {"inputKey": "question"}}}
    )
    assert_fails_before_training(
        doc, output, capsys, "spec.data.prompts.inputKey: column 'question' not found"
    )


def test_every_problem_is_reported_at_once(
    demo_assets: dict, tiny_rewards: str, output: Path, capsys
) -> None:
    doc = manifest(
        demo_assets["model"],
        demo_assets["prompts"],
        "ppo",
        {
            "models": {"critic": {"model": "/nonexistent/critic", "gpus": 0}},
            "data": {"prompts": {"labelKey": "solution"}},
            "checkpoint": {"path": "/tmp/ck", "resume": "/nonexistent/step_000010"},
        },
    )
    assert_fails_before_training(
        doc,
        output,
        capsys,
        "spec.models.critic.model: /nonexistent/critic does not exist",
        "spec.data.prompts.labelKey: column 'solution' not found",
        "spec.checkpoint.resume: checkpoint /nonexistent/step_000010 does not exist",
    )


VLLM = {"models": {"rollout": {"engine": "vllm", "engines": 1}}}


def test_vllm_engines_need_the_ray_backend(
    demo_assets: dict, tiny_rewards: str, output: Path, capsys
) -> None:
    doc = manifest(demo_assets["model"], demo_assets["prompts"], "grpo", VLLM)
    assert_fails_before_training(
        doc, output, capsys, "spec.models.rollout.engine: vllm engines run as Ray actors"
    )


def test_vllm_on_cpu_refuses_head_sizes_its_attention_lacks(
    demo_assets: dict, tiny_rewards: str, tmp_path: Path, output: Path, capsys
) -> None:
    """A model vLLM's CPU attention cannot run is refused before any engine starts (head size 16)."""
    from transformers import AutoConfig, AutoTokenizer, Qwen2ForCausalLM

    config = AutoConfig.from_pretrained(demo_assets["model"], num_attention_heads=4, num_key_value_heads=2)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "heads16")
    AutoTokenizer.from_pretrained(demo_assets["model"]).save_pretrained(tmp_path / "heads16")
    doc = manifest(str(tmp_path / "heads16"), demo_assets["prompts"], "grpo", VLLM)
    assert_fails_before_training(doc, output, capsys, "spec.models.actor.model: head size 16", backend="ray")


def test_vllm_lengths_beyond_the_models_positions(
    demo_assets: dict, tiny_rewards: str, output: Path, capsys
) -> None:
    doc = manifest(
        demo_assets["model"],
        demo_assets["prompts"],
        "grpo",
        {**VLLM, "generation": {"maxPromptLength": 200, "maxNewTokens": 100}},
    )
    assert_fails_before_training(
        doc,
        output,
        capsys,
        "spec.generation.maxNewTokens: maxPromptLength + maxNewTokens = 300 "
        "exceeds the model's max_position_embeddings 256",
        backend="ray",
    )


def test_missing_actor_model_of_a_vllm_job_ends_at_once(demo_assets: dict, tmp_path: Path) -> None:
    """`rlhf run` (Ray backend, vllm engine) with no actor model: exit 1 within seconds, the field
    on stderr and in the permanent status.failure; no Ray, no engine started."""
    doc = manifest("/nonexistent/actor", demo_assets["prompts"], "grpo", VLLM)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf_trainer.cli", "run", str(path), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    assert "spec.models.actor.model: /nonexistent/actor does not exist" in proc.stderr
    failure = json.loads((tmp_path / "out" / "status.json").read_text())["failure"]
    assert failure["permanent"] is True and "spec.models.actor.model" in failure["message"]
    assert "roles ready" not in proc.stderr
    assert elapsed < 120, f"took {elapsed:.0f}s"


def test_rlhf_run_exits_1_with_the_field_on_stderr(demo_assets: dict, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest("/nonexistent/m", demo_assets["prompts"])))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf_trainer.cli",
            "run",
            str(path),
            "--output",
            str(tmp_path / "out"),
            "--backend",
            "local",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "spec.models.actor.model: /nonexistent/m does not exist" in proc.stderr
