"""The chart ships the generated CRD: Helm installs crds/ on `helm install` and never upgrades it,
so upgrades apply it with `kubectl apply --server-side -f crds/` (docs/cluster.md). The copy must be
byte-identical to crds/ (written by `make crds`)."""

from __future__ import annotations

from pathlib import Path

import yaml

from .chartlib import CHART_CRD, CHART_DIR, GENERATED_CRD, run_helm


def test_chart_crd_is_identical_to_the_generated_crd() -> None:
    assert CHART_CRD.read_bytes() == GENERATED_CRD.read_bytes(), (
        f"{CHART_CRD.relative_to(CHART_DIR.parents[1])} differs from crds/: run `make crds`"
    )


def test_chart_crds_dir_holds_the_rlhfjob_and_rlhfpipeline_crds() -> None:
    names = sorted(p.name for p in CHART_CRD.parent.iterdir())
    assert names == sorted([GENERATED_CRD.name, "rlhfpipelines.rlhf.io.yaml"])
    pipeline = "rlhfpipelines.rlhf.io.yaml"
    assert (CHART_CRD.parent / pipeline).read_bytes() == (GENERATED_CRD.parent / pipeline).read_bytes()


def test_helm_renders_the_crd_with_include_crds(helm_home: Path) -> None:
    out = run_helm(["template", "rlhf", str(CHART_DIR), "--include-crds"], helm_home).stdout
    crds = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "CustomResourceDefinition"]
    assert sorted(c["metadata"]["name"] for c in crds) == ["rlhfjobs.rlhf.io", "rlhfpipelines.rlhf.io"]
    job = next(c for c in crds if c["metadata"]["name"] == "rlhfjobs.rlhf.io")
    assert job == yaml.safe_load(GENERATED_CRD.read_text())
