"""Every GPU example states the cluster it needs, and the statement matches the pods it asks for
(`plan_layout`, what `rlhf validate` and `rlhf render --layout` print); it runs in the team-a
namespace and tolerates the usual GPU-node taint."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from rlhf_operator.placement import plan_layout
from rlhf_trainer.api.validation import validate_manifest
from rlhf_trainer.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def specs(doc: dict) -> list:
    job, errors = validate_manifest(doc)
    assert not errors, errors
    return [stage.spec for stage in job.spec.stages] if job.kind == "RLHFPipeline" else [job.spec]


GPU_EXAMPLES = [
    path.name
    for path in sorted(EXAMPLES.glob("*.yaml"))
    if any(plan_layout(spec).total_gpus for spec in specs(yaml.safe_load(path.read_text())))
]


def test_there_are_gpu_examples_and_a_one_gpu_smoke_test():
    assert "smoke-grpo-qwen2.5-0.5b.yaml" in GPU_EXAMPLES and len(GPU_EXAMPLES) >= 10


@pytest.mark.parametrize("name", GPU_EXAMPLES)
def test_a_gpu_example_states_the_cluster_it_needs_and_tolerates_gpu_nodes(name: str):
    text = (EXAMPLES / name).read_text()
    doc = yaml.safe_load(text)
    (needs,) = re.findall(r"^# Cluster needs: ((?:.*\n)*?.*head pod)", text, re.M)
    needs = " ".join(needs.replace("# ", "").split())
    largest = max((plan_layout(spec) for spec in specs(doc)), key=lambda layout: layout.total_gpus)
    assert needs.startswith(f"{largest.total_gpus} GPU"), needs
    for group in largest.groups:
        assert f"{group.replicas} pod x {group.gpus_per_pod} GPU" in needs, needs
    assert doc["metadata"]["namespace"] == "team-a"
    for spec in specs(doc):
        assert GPU_TAINT in [t.to_wire() for t in spec.template.tolerations], name


def test_validate_prints_the_pods_a_job_asks_for(capsys):
    assert main(["validate", str(EXAMPLES / "ppo-llama3-8b.yaml")]) == 0
    out = capsys.readouterr().out
    assert (
        "ppo-llama3-8b: 1 Ray head pod (CPU) + 2 pod(s) x 8 nvidia.com/gpu = 16 GPUs on at least 2 GPU node(s)"
        in out
    )


def test_validate_render_and_logs_need_only_the_light_install():
    """docs/quickstart-gpu.md step 5: `pip install .` (no trainer extra) is enough for them."""
    import subprocess
    import sys

    example = str(EXAMPLES / "smoke-grpo-qwen2.5-0.5b.yaml")
    code = (
        "import sys, contextlib, io\n"
        "from rlhf_trainer.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['validate', {example!r}]) == 0 and main(['render', {example!r}]) == 0\n"
        "import rlhf_trainer.logs\n"
        "heavy = ('torch', 'ray', 'deepspeed', 'transformers', 'numpy', 'datasets', 'vllm')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
