"""The demo job learns: examples/tiny-grpo-cpu.yaml (in-process here; `make demo` runs it on Ray)
raises the mean reward of its last 5 steps by at least 0.25 over its first 5."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .helpers import metrics, run

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny-grpo-cpu.yaml"


def test_demo_example_learns_its_task(demo_assets: dict, tmp_path: Path) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    spec = doc["spec"]
    spec["models"]["actor"]["model"] = demo_assets["model"]
    spec["data"]["prompts"]["path"] = demo_assets["prompts"]
    spec["checkpoint"]["path"] = str(tmp_path / "ckpt")
    assert run(doc, tmp_path / "out") == 0
    rewards = [row["reward/mean"] for row in metrics(tmp_path / "out")]
    assert len(rewards) == spec["training"]["maxSteps"]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last >= first + 0.25, f"reward did not rise: first 5 {first:.3f}, last 5 {last:.3f}"
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0
