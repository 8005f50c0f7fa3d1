"""Summarise a py-spy collapsed-stack file (`py-spy record --format raw`): where the time goes.

    .venv/bin/python bench/profile_summary.py PROFILE.raw [--under RLLoop.step] [--top 25]

Prints, for the samples whose stack passes through a frame matching --under (default: all), the
inclusive share of the top functions and the self share of the top leaf functions.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# py-spy frames look like "function (path/to/file.py:123)"; the line number splits one function
# into many entries, so it is dropped.
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "rlhf_trainer/", "bench/"):
        if marker in path:
            path = (
                path.split(marker, 1)[1] if marker == "site-packages/" else marker + path.split(marker, 1)[1]
            )
            break
    return f"{match['func']} ({path})"


def summarise(path: Path, under: str | None, top: int) -> dict:
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame_name(f) for f in stack.split(";")]
        if under is not None:
            hits = [i for i, f in enumerate(frames) if under in f]
            if not hits:
                continue
            frames = frames[hits[0] :]
        n = int(count)
        total += n
        for name in set(frames):
            inclusive[name] += n
        leaf[frames[-1]] += n
    return {
        "samples": total,
        "inclusive": [(name, n / total) for name, n in inclusive.most_common(top)] if total else [],
        "self": [(name, n / total) for name, n in leaf.most_common(top)] if total else [],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profile", type=Path)
    parser.add_argument("--under", default=None, help="keep samples whose stack has a frame containing this")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    summary = summarise(args.profile, args.under, args.top)
    print(f"{summary['samples']} samples" + (f" under {args.under}" if args.under else ""))
    print("inclusive:")
    for name, share in summary["inclusive"]:
        print(f"  {share:6.1%}  {name}")
    print("self:")
    for name, share in summary["self"]:
        print(f"  {share:6.1%}  {name}")


if __name__ == "__main__":
    main()
