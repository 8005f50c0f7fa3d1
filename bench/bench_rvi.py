"""Speed of reward_variance_increase on many groups (GRPOVI's per-step cost).

    .venv/bin/python bench/bench_rvi.py [--groups 100000] [--n 16] [--repeats 5] [--device cpu]

Prints groups/s (best and median of the repeats) and writes bench/results/rvi.json.
Rewards are drawn from a few levels so groups carry ties, as verifiable rewards do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from rlhf_trainer.algorithms import reward_variance_increase


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--groups", type=int, default=100_000)
    parser.add_argument("--n", type=int, default=16, help="samples per group")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "rvi.json")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    levels = torch.rand(args.groups, 4, generator=gen, dtype=dtype)
    picks = torch.randint(0, 4, (args.groups, args.n), generator=gen)
    rewards = levels.gather(-1, picks).to(args.device)
    weights = None

    def sync() -> None:
        if rewards.is_cuda:
            torch.cuda.synchronize()

    reward_variance_increase(rewards[:1000], 0.0, 1.0, weights)  # warm-up
    sync()
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        adjusted = reward_variance_increase(rewards, 0.0, 1.0, weights)
        sync()
        seconds.append(time.perf_counter() - start)
    mean_gap = (adjusted.mean(-1) - rewards.mean(-1)).abs().max().item()
    std_gain = (adjusted.std(-1) - rewards.std(-1)).mean().item()

    result = {
        "benchmark": "reward_variance_increase",
        "groups": args.groups,
        "samples_per_group": args.n,
        "dtype": args.dtype,
        "device": str(rewards.device),
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "best_s": min(seconds),
        "median_s": statistics.median(seconds),
        "groups_per_s_best": args.groups / min(seconds),
        "groups_per_s_median": args.groups / statistics.median(seconds),
        "max_abs_mean_change": mean_gap,
        "mean_std_increase": std_gain,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"reward_variance_increase: {args.groups} groups x {args.n} ({args.dtype}, {result['device']}, "
        f"{result['torch_threads']} threads): {result['groups_per_s_median']:,.0f} groups/s median, "
        f"{result['groups_per_s_best']:,.0f} best ({result['median_s'] * 1e3:.1f} ms per call); "
        f"wrote {args.output}"
    )


if __name__ == "__main__":
    main()
