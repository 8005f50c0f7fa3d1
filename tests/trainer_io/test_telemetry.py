"""Telemetry: metrics.jsonl, the progress line, /metrics over HTTP, the curves PNG, the file sink."""

from __future__ import annotations

import io
import json
import math
import re
import socket
import urllib.request
from pathlib import Path

import pytest

from rlhf_trainer.api.job import TrainerConfig
from rlhf_trainer.api.status import RLHFJobStatus
from rlhf_trainer.engine.device import free_port
from rlhf_trainer.telemetry import METRIC_KEYS, Telemetry, TelemetryError, metric_names
from rlhf_trainer.telemetry.plot import read_rows

from .helpers import make_spec


def config(tmp_path: Path, metrics_port: int = 0, sink: str = "file", keep: int = 2) -> TrainerConfig:
    spec = make_spec(
        rewards=[
            {"name": "correct", "function": "rlhf_trainer.rewards.builtin:boxed_answer"},
            {"function": "rlhf_trainer.rewards.builtin:boxed_format", "weight": 0.1},
        ],
        checkpoint={"path": str(tmp_path / "ckpt"), "keep": keep},
    )
    return TrainerConfig(
        job_name="tiny",
        namespace="team-a",
        spec=spec,
        output_dir=str(tmp_path / "out"),
        status_sink=sink,
        metrics_port=metrics_port,
    )


def step_metrics(step: int) -> dict[str, float]:
    metrics = {key: float(step) + i / 100 for i, key in enumerate(METRIC_KEYS)}
    metrics.update({"reward/correct": 0.25 * step, "reward/boxed_format": 1.0, "critic/vf_loss": math.nan})
    return metrics


def scrape(port: int) -> dict[str, float]:
    """name{labels} -> value of every sample on /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_jsonl_has_one_row_per_step(tmp_path: Path) -> None:
    telemetry = Telemetry(config(tmp_path), total_steps=3, algorithm="grpo", stream=io.StringIO())
    for step in (1, 2):
        telemetry.log_step(step, step_metrics(step))
    rows = [json.loads(line) for line in Path(telemetry.metrics_path).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[1]["reward/mean"] == 2.0 and rows[1]["reward/correct"] == 0.5
    assert rows[1]["critic/vf_loss"] is None  # NaN is not JSON
    assert rows[0]["time"] <= rows[1]["time"]
    telemetry.close(success=True)


def test_non_numeric_metric_is_rejected_with_its_key(tmp_path: Path) -> None:
    telemetry = Telemetry(config(tmp_path), total_steps=3, algorithm="grpo", stream=io.StringIO())
    with pytest.raises(TypeError, match="metric 'reward/mean' must be a number, got str"):
        telemetry.log_step(1, {"reward/mean": "high"})


def test_one_concise_line_per_step_when_not_a_terminal(tmp_path: Path) -> None:
    stream = io.StringIO()
    telemetry = Telemetry(config(tmp_path), total_steps=4, algorithm="grpo", stream=stream)
    telemetry.log_step(1, {"reward/mean": 0.5, "kl/mean": 0.01, "timing/step_s": 2.0})
    telemetry.log_step(2, {"reward/mean": 0.75, "timing/step_s": 4.0})
    lines = stream.getvalue().splitlines()
    assert lines == [
        "step 1/4 (25%) | reward 0.500 | kl 0.0100 | step 2.0s | eta 6s",
        "step 2/4 (50%) | reward 0.750 | step 4.0s | eta 6s",  # mean step 3 s x 2 steps left
    ]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    stream = Terminal()
    telemetry = Telemetry(config(tmp_path), total_steps=4, algorithm="grpo", stream=stream)
    telemetry.log_step(3, {"reward/mean": 0.5})
    telemetry.close(success=True)
    shown = stream.getvalue()
    assert "3/4" in shown and "reward=0.500" in shown
    assert "step 3/4 (75%)" not in shown  # the bar replaces the log lines


def test_metrics_endpoint_serves_every_contract_name(tmp_path: Path) -> None:
    port = free_port()
    telemetry = Telemetry(
        config(tmp_path, metrics_port=port), total_steps=3, algorithm="grpo", stream=io.StringIO()
    )
    try:
        labels = '{algorithm="grpo",job="tiny",namespace="team-a"}'
        before = scrape(port)
        for name in metric_names():
            if name != "rlhf_reward_source_mean":
                assert f"{name}{labels}" in before, name
        assert math.isnan(before[f"rlhf_reward_mean{labels}"])  # declared, no value before the first step

        telemetry.log_step(2, step_metrics(2))
        after = scrape(port)
        for i, key in enumerate(METRIC_KEYS):
            name = "rlhf_" + key.replace("/", "_")
            if key != "critic/vf_loss":
                assert after[f"{name}{labels}"] == pytest.approx(2.0 + i / 100), name
        assert after[f"rlhf_step{labels}"] == 2
        assert after[f"rlhf_total_steps{labels}"] == 3
        source = '{algorithm="grpo",job="tiny",namespace="team-a",source="correct"}'
        assert after[f"rlhf_reward_source_mean{source}"] == 0.5
        assert after[f"rlhf_reward_source_mean{source.replace('correct', 'boxed_format')}"] == 1.0
        assert not any(re.match(r"rlhf_reward_correct", name) for name in after)  # sources stay one metric
        assert set(metric_names()) >= {"rlhf_reward_mean", "rlhf_timing_generate_s", "rlhf_perf_tokens_per_s"}
    finally:
        telemetry.close(success=True)


def test_busy_metrics_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(TelemetryError, match=f"metricsPort {port}: cannot serve /metrics"):
            Telemetry(
                config(tmp_path, metrics_port=port), total_steps=3, algorithm="grpo", stream=io.StringIO()
            )


def test_close_writes_a_png_of_the_curves(tmp_path: Path) -> None:
    telemetry = Telemetry(config(tmp_path), total_steps=5, algorithm="grpo", stream=io.StringIO())
    for step in range(1, 6):
        telemetry.log_step(step, step_metrics(step))
    telemetry.close(success=True)
    png = Path(telemetry.curves_path).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 10_000


def test_resumed_run_plots_the_latest_row_of_each_step(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "reward/mean": 0.1}, {"step": 2, "reward/mean": 0.2}, {"step": 2, "reward/mean": 0.3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "rew')
    assert [(r["step"], r["reward/mean"]) for r in read_rows(str(path))] == [(1, 0.1), (2, 0.3)]


def test_file_sink_writes_trainer_status_and_keeps_last_k_checkpoints(tmp_path: Path) -> None:
    cfg = config(tmp_path, keep=2)
    telemetry = Telemetry(cfg, total_steps=4, algorithm="grpo", stream=io.StringIO())
    for step in (1, 2, 3):
        telemetry.log_step(step, step_metrics(step))
        telemetry.checkpoint_saved(
            step, f"/ckpt/step-{step}", hf_path=f"/ckpt/step-{step}/hf" if step > 1 else None
        )
    status = json.loads((Path(cfg.output_dir) / "status.json").read_text())
    assert set(status) == {"progress", "metrics", "checkpoints", "latestCheckpoint"}
    progress = status["progress"]
    assert {k: progress[k] for k in ("step", "totalSteps", "percent", "summary", "reward")} == {
        "step": 3,
        "totalSteps": 4,
        "percent": 75.0,
        "summary": "3/4",
        "reward": 3.0,
    }
    assert progress["etaSeconds"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", progress["updatedAt"])
    assert status["metrics"]["reward/correct"] == 0.75
    assert "critic/vf_loss" not in status["metrics"]  # NaN left out
    assert [c["step"] for c in status["checkpoints"]] == [2, 3]
    assert status["latestCheckpoint"] == {
        "step": 3,
        "path": "/ckpt/step-3",
        "hfPath": "/ckpt/step-3/hf",
        "time": status["checkpoints"][1]["time"],
        "attempt": 0,
        "run": 0,
    }
    RLHFJobStatus.model_validate(status)  # the CRD's status model accepts it
    telemetry.close(success=True)


def test_restarted_attempt_continues_the_checkpoint_list(tmp_path: Path) -> None:
    cfg = config(tmp_path, keep=3)
    first = Telemetry(cfg, total_steps=10, algorithm="grpo", stream=io.StringIO())
    for step in (2, 4, 6):
        first.log_step(step, {"reward/mean": 0.1})
        first.checkpoint_saved(step, f"/ckpt/step-{step}")
    first.close(success=False)
    # The next attempt resumes from step 4's checkpoint (step 6's was lost) and saves step 6 again.
    second = Telemetry(cfg, total_steps=10, algorithm="grpo", stream=io.StringIO())
    second.log_step(5, {"reward/mean": 0.2})
    second.checkpoint_saved(6, "/ckpt/step-6-again")
    status = json.loads((Path(cfg.output_dir) / "status.json").read_text())
    assert [(c["step"], c["path"]) for c in status["checkpoints"]] == [
        (2, "/ckpt/step-2"),
        (4, "/ckpt/step-4"),
        (6, "/ckpt/step-6-again"),
    ]
    second.close(success=True)


def test_no_sink_writes_no_status(tmp_path: Path) -> None:
    cfg = config(tmp_path, sink="none")
    telemetry = Telemetry(cfg, total_steps=1, algorithm="grpo", stream=io.StringIO())
    telemetry.log_step(1, {"reward/mean": 1.0})
    telemetry.close(success=True)
    assert sorted(p.name for p in Path(cfg.output_dir).iterdir()) == ["curves.png", "metrics.jsonl"]


def test_a_superseded_attempt_never_moves_the_latest_checkpoint_back(tmp_path: Path) -> None:
    old = Telemetry(config(tmp_path, keep=3), total_steps=10, algorithm="grpo", stream=io.StringIO())
    old.checkpoint_saved(2, "/ckpt/a0/step-2")
    newer_config = config(tmp_path, keep=3).model_copy(update={"attempt": 1})
    newer = Telemetry(newer_config, total_steps=10, algorithm="grpo", stream=io.StringIO())
    newer.checkpoint_saved(4, "/ckpt/a1/step-4")
    # The old attempt is still running (the operator gave up on it): what it saves stays out.
    old.log_step(3, {"reward/mean": 0.1})
    old.checkpoint_saved(3, "/ckpt/a0/step-3")
    old.close(success=False)
    status = json.loads((Path(newer_config.output_dir) / "status.json").read_text())
    assert status["latestCheckpoint"]["path"] == "/ckpt/a1/step-4"
    assert status["latestCheckpoint"]["attempt"] == 1
    assert old.superseded
