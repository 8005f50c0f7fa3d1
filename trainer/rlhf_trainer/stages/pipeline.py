"""`rlhf run PIPELINE.yaml`: an RLHFPipeline's stages one after another on this machine, each
stage's HF export feeding the stages that name it (`stage://<name>`).

Each stage writes under `<output>/<stage>/` (metrics.jsonl, curves.png, status.json). A stage whose
output already records a finished run (status.json with progress at 100% and its export on disk)
is not run again, as the operator never reruns a Succeeded stage: rerunning the pipeline after a
failure continues with the stage that failed.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from ..api.job import TrainerConfig
from ..api.pipeline import RLHFPipeline, child_job_name, resolve_references
from ..api.spec import RLHFJobSpec

log = logging.getLogger("rlhf_trainer")


def finished_export(output_dir: str) -> str | None:
    """The HF export of a stage that finished in `output_dir`, or None."""
    try:
        with open(os.path.join(output_dir, "status.json")) as f:
            status = json.load(f)
    except (OSError, ValueError):
        return None
    progress = status.get("progress") or {}
    latest = status.get("latestCheckpoint") or {}
    done = progress.get("totalSteps") and progress.get("step") == progress.get("totalSteps")
    hf = latest.get("hfPath")
    return hf if done and hf and os.path.isfile(os.path.join(hf, "config.json")) else None


def run_pipeline(pipeline: RLHFPipeline, output_dir: str | None, backend: str, metrics_port: int) -> int:
    from ..runner import run_trainer

    name = pipeline.metadata.name
    root = output_dir or os.path.join("runs", name)
    exported: dict[str, str | None] = {}
    stages = pipeline.spec.stages
    for index, stage in enumerate(stages, 1):
        stage_dir = os.path.join(root, stage.name)
        done = finished_export(stage_dir)
        if done is not None:
            print(f"stage {index}/{len(stages)} {stage.name}: already finished, model {done}")
            exported[stage.name] = done
            continue
        spec = RLHFJobSpec.model_validate(resolve_references(stage.spec.to_wire(), exported))
        print(f"stage {index}/{len(stages)} {stage.name} ({spec.algorithm.name})", flush=True)
        config = TrainerConfig(
            job_name=child_job_name(name, stage.name),
            namespace=pipeline.metadata.namespace or "default",
            spec=spec,
            output_dir=stage_dir,
            status_sink="file",
            metrics_port=metrics_port,
            backend=backend,
        )
        code = run_trainer(config)
        if code != 0:
            print(f"stage {stage.name} failed (exit {code}); later stages not run")
            return code
        exported[stage.name] = _latest_export(stage_dir)
    print(f"pipeline {name}: {len(stages)} stage(s) finished")
    return 0


def _latest_export(stage_dir: str) -> Any:
    try:
        with open(os.path.join(stage_dir, "status.json")) as f:
            return (json.load(f).get("latestCheckpoint") or {}).get("hfPath")
    except (OSError, ValueError):
        return None
