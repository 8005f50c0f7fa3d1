"""Bad input fails before training, exit code 1, one stderr line naming the field; nothing starts."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .helpers import manifest, run


def assert_fails_before_training(doc: dict, output: Path, capsys: pytest.CaptureFixture, *lines: str) -> None:
    assert run(doc, output) == 1
    err = capsys.readouterr().err
    for line in lines:
        assert line in err, err
    assert not output.exists(), "nothing may be written before the checks pass"


def test_missing_model_path(demo_assets: dict, tiny_rewards: str, output: Path, capsys) -> None:
    doc = manifest("/nonexistent/tiny-model", demo_assets["prompts"])
    assert_fails_before_training(doc, output, capsys, "spec.models.actor.model: /nonexistent/tiny-model does not exist")


def test_unimportable_reward_function(demo_assets: dict, output: Path, capsys) -> None:
    doc = manifest(demo_assets["model"], demo_assets["prompts"], "grpo",
                   {"models": {"reward": [{"function": "no_such_module_xyz:score"}]}})
    assert_fails_before_training(doc, output, capsys,
                                 "spec.models.reward[0].function: cannot import module 'no_such_module_xyz'")


def test_unreachable_reward_server(demo_assets: dict, output: Path, capsys) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/score"
    doc = manifest(demo_assets["model"], demo_assets["prompts"], "grpo", {"models": {"reward": [{"url": url}]}})
    assert_fails_before_training(doc, output, capsys, f"spec.models.reward[0].url: {url} unreachable")


def test_absent_dataset_key(demo_assets: dict, tiny_rewards: str, output: Path, capsys) -> None:
    doc = manifest(demo_assets["model"], demo_assets["prompts"], "grpo",
                   {"data": {"prompts": {"inputKey": "question"}}})
    assert_fails_before_training(doc, output, capsys, "spec.data.prompts.inputKey: column 'question' not found")


def test_every_problem_is_reported_at_once(demo_assets: dict, tiny_rewards: str, output: Path, capsys) -> None:
    doc = manifest(demo_assets["model"], demo_assets["prompts"], "ppo", {
        "models": {"critic": {"model": "/nonexistent/critic", "gpus": 0}},
        "data": {"prompts": {"labelKey": "solution"}},
        "checkpoint": {"path": "/tmp/ck", "resume": "/nonexistent/step_000010"},
    })
    assert_fails_before_training(
        doc, output, capsys,
        "spec.models.critic.model: /nonexistent/critic does not exist",
        "spec.data.prompts.labelKey: column 'solution' not found",
        "spec.checkpoint.resume: checkpoint /nonexistent/step_000010 does not exist",
    )


def test_vllm_engine_on_cpu_is_refused(demo_assets: dict, tiny_rewards: str, output: Path, capsys) -> None:
    doc = manifest(demo_assets["model"], demo_assets["prompts"], "grpo", {"models": {"rollout": {"engine": "vllm", "engines": 1}}})
    assert_fails_before_training(doc, output, capsys, "spec.models.rollout.engine: vllm engine needs GPUs")


def test_rlhf_run_exits_1_with_the_field_on_stderr(demo_assets: dict, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest("/nonexistent/m", demo_assets["prompts"])))
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf_trainer.cli", "run", str(path), "--output", str(tmp_path / "out"),
         "--backend", "local"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    assert "spec.models.actor.model: /nonexistent/m does not exist" in proc.stderr
