"""A run-time error that names its field: one line on stderr and in status.failure; the traceback
in <output>/error.log, or on stderr with --verbose (failures.py)."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_trainer.failures import VERBOSE_ENV

from .helpers import manifest, run

BAD_REWARDS = "def short(prompts, completions, labels):\n    return [1.0]\n"


def bad_reward_job(demo_assets: dict, tmp_path: Path, monkeypatch) -> dict:
    (tmp_path / "bad_rewards.py").write_text(BAD_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = {"models": {"reward": [{"function": "bad_rewards:short"}]}}
    return manifest(demo_assets["model"], demo_assets["prompts"], overrides=overrides)


def test_a_bad_reward_output_is_one_line_and_the_traceback_goes_to_a_file(
    demo_assets: dict, output: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    assert run(bad_reward_job(demo_assets, tmp_path, monkeypatch), output) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "spec.models.reward[0]" in line and "returned 1 rewards for 4 completions" in line, line
    assert f"[traceback: {output / 'error.log'}; --verbose prints it]" in line
    assert "Traceback (most recent call last)" in (output / "error.log").read_text()
    failure = json.loads((output / "status.json").read_text())["failure"]
    assert failure["permanent"] is False and "returned 1 rewards for 4 completions" in failure["message"]


def test_verbose_puts_the_traceback_in_the_log(
    demo_assets: dict, output: Path, tmp_path: Path, monkeypatch, capsys, caplog
) -> None:
    monkeypatch.setenv(VERBOSE_ENV, "1")
    assert run(bad_reward_job(demo_assets, tmp_path, monkeypatch), output) == 1
    assert "error: spec.models.reward[0]" in capsys.readouterr().err
    failed = [r for r in caplog.records if r.getMessage() == "training failed"]
    assert failed and failed[0].exc_info is not None  # the log handler prints the traceback
