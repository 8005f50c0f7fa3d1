"""The algorithms package stays a pure torch library."""

from __future__ import annotations

import subprocess
import sys

import rlhf_trainer.algorithms as algorithms


def test_importing_the_package_pulls_in_no_framework() -> None:
    code = (
        "import sys, rlhf_trainer.algorithms\n"
        "heavy = {'transformers', 'ray', 'deepspeed', 'vllm', 'scipy'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_exported_name_exists() -> None:
    missing = [name for name in algorithms.__all__ if not hasattr(algorithms, name)]
    assert missing == []


def test_registries_cover_exactly_the_names_the_job_api_accepts() -> None:
    from rlhf_trainer.api import spec
    from rlhf_trainer.api.stages import OFFLINE_ALGORITHMS

    # The offline stages (sft, rm, dpo, kto) run in rlhf_trainer.stages, not through an estimator.
    assert set(algorithms.ALGORITHM_ESTIMATORS) == set(spec.ALGORITHMS) - set(OFFLINE_ALGORITHMS)
    assert set(algorithms.POLICY_LOSS_AGGREGATIONS) == set(spec.LOSS_AGGREGATIONS)
    assert set(algorithms.KL_ESTIMATORS) == set(spec.KLSpec.model_fields["estimator"].annotation.__args__)
