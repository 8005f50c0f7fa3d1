"""What every benchmark shares: the machine description, result files, step statistics.

Benchmarks are scripts (`python bench/NAME.py`), so this module is imported by its bare name.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
PYTHON = sys.executable


def bench_env() -> dict[str, str]:
    """The environment every child process runs with: offline hub, CPU DeepSpeed, no Ray telemetry."""
    env = dict(os.environ)
    env.update(
        {
            "DS_ACCELERATOR": "cpu",
            "DS_BUILD_OPS": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
            # DeepSpeed JIT-builds its CPU shm op into torch's extension cache; a cache shared with
            # checkouts at other paths is rebuilt (minutes of CPU) whenever their paths alternate.
            "TORCH_EXTENSIONS_DIR": env.get("TORCH_EXTENSIONS_DIR")
            or str(REPO / ".cache" / "torch_extensions"),
            "PYTHONPATH": os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH", "")) if p),
        }
    )
    return env


def machine() -> dict[str, Any]:
    """Enough to tell two result files' machines apart."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        info["memory_gib"] = round(mem_kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def write_result(name: str, result: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **result}, indent=2) + "\n")
    return path


def read_result(name: str, results_dir: Path = RESULTS_DIR) -> dict[str, Any] | None:
    try:
        return json.loads((results_dir / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def run_child(
    argv: list[str], timeout: float, log_path: Path | None = None, env: dict[str, str] | None = None
) -> float:
    """Run a benchmark worker process; its output goes to log_path. Returns its wall seconds;
    failure raises with the log's tail."""
    import time

    log_path = log_path or RESULTS_DIR / "logs" / (Path(argv[0]).stem + ".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.run(
            [PYTHON, *argv],
            cwd=REPO,
            env={**bench_env(), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}; {log_path} ends:\n{tail}")
    return time.monotonic() - start


def steady_state(step_ends: list[float], start: float, warmup: int = 1) -> dict[str, float]:
    """Per-step wall seconds from the end times of consecutive steps, the first `warmup` steps dropped
    (they pay for lazy initialisation, allocator growth and first-call dispatch)."""
    if len(step_ends) <= warmup:
        raise ValueError(f"need more than {warmup} steps to measure, got {len(step_ends)}")
    edges = [start, *step_ends]
    durations = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
    steady = durations[warmup:]
    return {
        "steps_measured": len(steady),
        "seconds_per_step": sum(steady) / len(steady),
        "seconds_per_step_median": statistics.median(steady),
        "seconds_per_step_min": min(steady),
        "first_step_s": durations[0],
        "measured_s": sum(steady),
    }


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")
