"""Helpers of the node tests (test_node_*.py): the tiny CPU job of examples/tiny-grpo-cpu-cluster.yaml
with fewer steps, its status, a watcher that keeps every status snapshot, and the objects it owns."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from e2e_kube import Kubectl

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tiny-grpo-cpu-cluster.yaml"


def tiny_job(name: str, *, steps: int, every: int) -> dict[str, Any]:
    job = yaml.safe_load(EXAMPLE.read_text())
    job["metadata"]["name"] = name
    job["spec"]["training"]["maxSteps"] = steps
    job["spec"]["checkpoint"]["everySteps"] = every
    return job


def status_of(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return kubectl.json("get", "rlhfjob", name, namespace=namespace).get("status") or {}


def watch(kubectl: Kubectl, namespace: str, name: str, until, timeout: float) -> list[dict[str, Any]]:
    """Status snapshots every half second until until(status) or the job ends; returns them all."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = status_of(kubectl, namespace, name)
        seen.append(status)
        if until(status) or status.get("phase") in ("Succeeded", "Failed"):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"rlhfjob {namespace}/{name}: timed out; last status {seen[-1] if seen else None}")


def owned(kubectl: Kubectl, namespace: str, kinds: str) -> list[str]:
    out = kubectl("get", kinds, "-l", "rlhf.io/job", "-o", "name", namespace=namespace).stdout
    return out.split()
