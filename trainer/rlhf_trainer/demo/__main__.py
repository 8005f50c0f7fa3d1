"""`python -m rlhf_trainer.demo [--root DIR] [--force]`: build the demo model and data if missing."""

from __future__ import annotations

import argparse
import os

from .build import build_demo
from .stages import build_stage_data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf_trainer.demo", description=__doc__)
    parser.add_argument("--root", default=".cache/demo", help="where to build (default .cache/demo)")
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    paths = build_demo(args.root, force=args.force)
    build_stage_data(args.root, force=args.force)  # the offline stages' toy data (tiny-pipeline-cpu)
    print(f"demo model: {paths['model']}\ndemo prompts: {paths['prompts']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
