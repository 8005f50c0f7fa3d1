"""GRPOVI vs GRPO learning speed on the `make demo` task, several seeds each.

    .venv/bin/python bench/bench_grpovi_vs_grpo.py [--seeds 1 2 3 4 5] [--steps 40] [--threshold 0.3]
        [--task demo|continuous]

--task continuous replaces the demo's reward (a fraction in [0, 1], with partial credit) by
bench/continuous_reward.py: the same fraction squashed by a sigmoid into [0.45, 0.55], continuous
and bunched within each group as a reward model's scores are; grpovi then uses rewardRange
mode batch (a reward model has no known range), and thresholds/levels are given on the fraction
and mapped through the same squash. Writes bench/results/grpovi_continuous.json.

The manifest is examples/tiny-grpo-cpu.yaml with checkpoints off and, for grpovi, rewardRange
fixed [0, 1] (the task's reward is a fraction). For every (algorithm, seed) run: reward/mean per
step, its moving average over --window steps, and the first step at which that average reaches
the threshold (an absolute reward level; --levels adds more levels to the JSON). A run that never
reaches it counts as steps + 1 (censored) and is flagged. Reported: per-seed steps, medians, the
ratio GRPO / GRPOVI (above 1: GRPOVI got there in fewer steps), and the mean reward over all steps
(area under the curve). Both algorithms see the same seeds, hence the same prompt order.

Writes bench/results/grpovi_vs_grpo.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import yaml
from common import RESULTS_DIR, ratio, run_child, write_result
from continuous_reward import squash
from workload import bench_manifest, load_manifest, validated

ALGORITHMS = ("grpo", "grpovi")


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean; the first window - 1 entries average what exists so far."""
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1) : i + 1]
        out.append(sum(part) / len(part))
    return out


def steps_to_threshold(rewards: list[float], threshold: float, window: int) -> int | None:
    """The 1-based step at which the trailing average (full windows only) first reaches threshold."""
    averaged = moving_average(rewards, window)
    for step, value in enumerate(averaged, 1):
        if step >= window and value >= threshold:
            return step
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=0.3, help="the reward level of the headline ratio")
    parser.add_argument(
        "--levels",
        type=float,
        nargs="+",
        default=[0.1, 0.2, 0.3, 0.4, 0.5],
        help="more levels, reported in the JSON",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per run")
    parser.add_argument("--task", choices=["demo", "continuous"], default="demo")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (0: default); learning, not speed, is measured here",
    )
    args = parser.parse_args()

    base = load_manifest()
    curves: dict[str, dict[int, list[float]]] = {a: {} for a in ALGORITHMS}
    seconds: dict[str, list[float]] = {a: [] for a in ALGORITHMS}
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-") as tmp:
        for seed in args.seeds:
            for algorithm in ALGORITHMS:
                doc = bench_manifest(
                    base, steps=args.steps, seed=seed, algorithm=algorithm, name=f"bench-{algorithm}-s{seed}"
                )
                if args.task == "continuous":
                    doc["spec"]["models"]["reward"] = [
                        {"function": "continuous_reward:reward", "weight": 1.0}
                    ]
                    if algorithm == "grpovi":
                        doc["spec"]["algorithm"]["rewardRange"] = {"mode": "batch"}
                validated(doc)
                manifest = Path(tmp) / f"{algorithm}-{seed}.yaml"
                manifest.write_text(yaml.safe_dump(doc))
                out = Path(tmp) / f"{algorithm}-{seed}.json"
                print(f"{algorithm} seed {seed} ...", flush=True)
                run_child(
                    ["bench/ours_grpo.py", str(manifest), "--backend", "local", "--output", str(out)],
                    args.timeout,
                    RESULTS_DIR / "logs" / f"grpovi_vs_grpo.{args.task}.{algorithm}.{seed}.log",
                    env={"OMP_NUM_THREADS": str(args.threads)} if args.threads else None,
                )
                run = json.loads(out.read_text())
                curves[algorithm][seed] = run["reward_mean"]
                seconds[algorithm].append(run["train_s"])

    threshold = args.threshold
    # Levels are fractions of the letter; on the continuous task the reward is their squash.
    on_reward = squash if args.task == "continuous" else (lambda level: level)

    def median_steps(algorithm: str, level: float) -> tuple[dict[int, int | None], float]:
        reached = {
            seed: steps_to_threshold(c, on_reward(level), args.window)
            for seed, c in curves[algorithm].items()
        }
        return reached, statistics.median(s if s is not None else args.steps + 1 for s in reached.values())

    per_algorithm: dict[str, Any] = {}
    for algorithm in ALGORITHMS:
        reached, median = median_steps(algorithm, threshold)
        per_algorithm[algorithm] = {
            "steps_to_threshold": reached,
            "runs_not_reaching": sum(s is None for s in reached.values()),
            "median_steps": median,
            "median_steps_by_level": {str(level): median_steps(algorithm, level)[1] for level in args.levels},
            "mean_reward_all_steps": statistics.fmean(v for c in curves[algorithm].values() for v in c),
            "final_moving_average": statistics.fmean(
                moving_average(c, args.window)[-1] for c in curves[algorithm].values()
            ),
            "seconds_per_run": statistics.fmean(seconds[algorithm]),
        }
    result = {
        "task": "examples/tiny-grpo-cpu.yaml (checkpoint off; grpovi: rewardRange fixed [0, 1])"
        if args.task == "demo"
        else "examples/tiny-grpo-cpu.yaml with bench/continuous_reward.py (squashed into [0.45, 0.55]; "
        "grpovi: rewardRange batch); levels are letter fractions",
        "task_name": args.task,
        "seeds": args.seeds,
        "steps": args.steps,
        "window": args.window,
        "threshold": threshold,
        "ratio_steps_by_level": {
            str(level): ratio(
                per_algorithm["grpo"]["median_steps_by_level"][str(level)],
                per_algorithm["grpovi"]["median_steps_by_level"][str(level)],
            )
            for level in args.levels
        },
        "algorithms": per_algorithm,
        "ratio_steps_grpo_over_grpovi": ratio(
            per_algorithm["grpo"]["median_steps"], per_algorithm["grpovi"]["median_steps"]
        ),
        "ratio_mean_reward_grpovi_over_grpo": ratio(
            per_algorithm["grpovi"]["mean_reward_all_steps"], per_algorithm["grpo"]["mean_reward_all_steps"]
        ),
        "reward_curves": {a: {str(s): c for s, c in per_seed.items()} for a, per_seed in curves.items()},
    }
    path = write_result("grpovi_vs_grpo" if args.task == "demo" else "grpovi_continuous", result)
    for algorithm, info in per_algorithm.items():
        print(
            f"{algorithm:7s} steps to {threshold:.3f}: {info['steps_to_threshold']} "
            f"(median {info['median_steps']}), mean reward {info['mean_reward_all_steps']:.3f}"
        )
    print(f"GRPO/GRPOVI median steps ratio {result['ratio_steps_grpo_over_grpovi']:.2f}; wrote {path}")


if __name__ == "__main__":
    main()
