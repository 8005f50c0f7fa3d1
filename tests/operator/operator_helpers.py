"""Shared builders for the operator's unit tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from rlhf_trainer.api.job import RLHFJob
from rlhf_trainer.api.validation import validate_manifest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = {path.stem: path for path in sorted((REPO / "examples").glob("*.yaml"))}
UID = "0f6c1e2a-1111-4222-8333-444455556666"


def example_doc(stem: str) -> dict[str, Any]:
    return yaml.safe_load(EXAMPLES[stem].read_text())


def job_from(doc: dict[str, Any], uid: str | None = UID) -> RLHFJob:
    doc = copy.deepcopy(doc)
    if uid:
        doc["metadata"]["uid"] = uid
    job, errors = validate_manifest(doc)
    assert not errors, errors
    return job


def example_job(stem: str, uid: str | None = UID) -> RLHFJob:
    return job_from(example_doc(stem), uid)


def with_spec(stem: str, changes: dict[str, Any]) -> dict[str, Any]:
    """An example manifest with parts of its spec replaced (dotted paths as keys)."""
    doc = example_doc(stem)
    for path, value in changes.items():
        node = doc["spec"]
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return doc
