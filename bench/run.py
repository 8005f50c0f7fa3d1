"""`make bench`: run the CPU benchmarks, write bench/results/<name>.json, print the table of ratios.

    .venv/bin/python bench/run.py [--only NAME ...] [--skip NAME ...] [--quick] [--update-readme]

NAME is one of rvi, trainer_vs_trl, trainer_vs_trl_qwen2, trainer_vs_trl_qwen2_long, grpovi_vs_grpo, grpovi_continuous,
operator_scale, vllm_vs_hf. --quick runs each with a
smaller size (minutes, for a smoke check; its numbers are not the ones to quote). Each benchmark
runs in its own process; one that fails is reported and the others still run (exit 1 at the end).
--update-readme writes the table between the results markers of bench/README.md.
The GPU benchmark (bench/gpu_bench.py) needs CUDA and is not part of this.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import BENCH_DIR, PYTHON, REPO, RESULTS_DIR, bench_env, machine
from report import table

README = BENCH_DIR / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

# name -> (script, full-size arguments, --quick arguments)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "rvi": (
        "bench/bench_rvi.py",
        ["--groups", "100000", "--repeats", "10"],
        ["--groups", "20000", "--repeats", "3"],
    ),
    "trainer_vs_trl": (
        "bench/bench_trainer_vs_trl.py",
        ["--steps", "10", "--rounds", "2", "--ray", "--vllm"],
        ["--steps", "4", "--rounds", "1", "--settings", "1-thread"],
    ),
    "trainer_vs_trl_qwen2": (
        "bench/bench_trainer_vs_trl.py",
        [
            "--workload",
            "qwen2-3.5m",
            "--steps",
            "6",
            "--rounds",
            "2",
            "--ray",
            "--settings",
            "passive",
        ],
        ["--workload", "qwen2-3.5m", "--steps", "4", "--rounds", "1", "--settings", "passive"],
    ),
    "trainer_vs_trl_qwen2_long": (
        "bench/bench_trainer_vs_trl.py",
        ["--workload", "qwen2-3.5m-long", "--steps", "6", "--rounds", "2", "--settings", "passive"],
        ["--workload", "qwen2-3.5m-long", "--steps", "4", "--rounds", "1", "--settings", "passive"],
    ),
    "grpovi_vs_grpo": (
        "bench/bench_grpovi_vs_grpo.py",
        ["--seeds", "1", "2", "3", "4", "5", "--steps", "40"],
        ["--seeds", "1", "--steps", "10"],
    ),
    "grpovi_continuous": (
        "bench/bench_grpovi_vs_grpo.py",
        ["--task", "continuous", "--seeds", "1", "2", "3", "4", "5", "--steps", "40"],
        ["--task", "continuous", "--seeds", "1", "--steps", "10"],
    ),
    "operator_scale": ("bench/bench_operator_scale.py", ["--jobs", "500"], ["--jobs", "50"]),
    "vllm_vs_hf": (
        "bench/bench_vllm_vs_hf.py",
        ["--rounds", "2", "--repeats", "5"],
        ["--rounds", "1", "--repeats", "2"],
    ),
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=None)
    parser.add_argument("--skip", nargs="+", choices=list(BENCHMARKS), default=[])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not numbers to quote")
    parser.add_argument("--update-readme", action="store_true", help="write the table into bench/README.md")
    args = parser.parse_args()

    names = [n for n in (args.only or list(BENCHMARKS)) if n not in args.skip]
    failed: list[str] = []
    seconds: dict[str, float] = {}
    (RESULTS_DIR / "logs").mkdir(parents=True, exist_ok=True)
    for name in names:
        script, full, quick = BENCHMARKS[name]
        argv = [PYTHON, script, *(quick if args.quick else full)]
        print(f"== {name}: {' '.join(argv[1:])}", flush=True)
        start = time.monotonic()
        proc = subprocess.run(argv, cwd=REPO, env=bench_env())
        seconds[name] = time.monotonic() - start
        print(f"== {name}: exit {proc.returncode} after {seconds[name]:.0f}s", flush=True)
        if proc.returncode != 0:
            failed.append(name)

    info = machine()
    times = seconds if args.quick else _merge_times(seconds)  # quick sizes' times are not the full ones
    header = (
        f"Machine: {info.get('cpus')} CPUs ({info.get('cpu_model', '?')}), {info.get('memory_gib', '?')} GiB, "
        f"no GPU; torch {info.get('torch', '?')}; updated {info['date']}{' (quick sizes)' if args.quick else ''}. "
        "Wall time per benchmark: " + ", ".join(f"{n} {s:.0f}s" for n, s in times.items()) + "."
    )
    text = table(names)
    print()
    print(header)
    print(text)
    if args.update_readme:
        command = "python bench/run.py" + (" --quick" if args.quick else "")
        # The README keeps every benchmark's latest result (each row carries its date).
        _update_readme(
            f"{header}\nCommand: `{command}` (`make bench`); one benchmark: `--only NAME`.\n\n{table()}\n"
        )
    if failed:
        print(f"\nfailed: {', '.join(failed)} (logs in {RESULTS_DIR / 'logs'})", file=sys.stderr)
        return 1
    return 0


def _merge_times(seconds: dict[str, float]) -> dict[str, float]:
    """Latest wall seconds of every benchmark, kept across runs in results/run_times.json."""
    path = RESULTS_DIR / "run_times.json"
    try:
        times = json.loads(path.read_text())
    except (OSError, ValueError):
        times = {}
    times.update(seconds)
    path.write_text(json.dumps(times, indent=2) + "\n")
    return {name: times[name] for name in BENCHMARKS if name in times}


def _update_readme(block: str) -> None:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{README}: the markers {BEGIN} / {END} are missing")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{block}{END}{tail}")


if __name__ == "__main__":
    sys.exit(main())
