"""Names, labels and annotations shared by the operator's children (and by the tests)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from rlhf_trainer.api.job import API_VERSION, KIND

LABEL_JOB = "rlhf.io/job"
LABEL_ATTEMPT = "rlhf.io/attempt"
LABEL_ROLE = "rlhf.io/role"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "rlhf-operator"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
# Digest of the RLHFJob spec a RayJob was rendered from (its fields that cannot change in place):
# an edit is noticed by comparing digests; the spec itself is read back from the trainer ConfigMap
# only then (a whole spec in an annotation would cap specs at the 256 KiB annotation limit).
ANNOTATION_SPEC_DIGEST = "rlhf.io/spec-sha256"
# Spec fields (wire names) that apply to a live RayJob; backoffLimit and preRunningDeadlineSeconds
# are the operator's own.
IN_PLACE = (
    "suspend",
    "activeDeadlineSeconds",
    "ttlSecondsAfterFinished",
    "backoffLimit",
    "preRunningDeadlineSeconds",
)

RAY_GROUP = "ray.io"
RAY_VERSION = "v1"
RAY_API_VERSION = f"{RAY_GROUP}/{RAY_VERSION}"
RAYJOB_PLURAL = "rayjobs"

CONFIG_KEY = "trainer.yaml"
CONFIG_DIR = "/etc/rlhf"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
TRAINER_METRICS_PORT = 9400
RAY_METRICS_PORT = 8080

_RAYJOB_NAME = re.compile(r"^(?P<job>.+)-a(?P<attempt>0|[1-9][0-9]*)$")


def rayjob_name(job_name: str, attempt: int) -> str:
    """One RayJob per attempt, so a restart gets a fresh one: `<job>-a<attempt>`."""
    return f"{job_name}-a{attempt}"


def attempt_of(rayjob_name_: str, job_name: str) -> int | None:
    """The attempt a RayJob name stands for, or None when it is not one of this job's."""
    match = _RAYJOB_NAME.match(rayjob_name_)
    if not match or match.group("job") != job_name:
        return None
    return int(match.group("attempt"))


def config_map_name(job_name: str) -> str:
    return f"{job_name}-trainer-config"


def trainer_account_name(job_name: str) -> str:
    """ServiceAccount, Role and RoleBinding of the trainer share this name."""
    return f"{job_name}-trainer"


def network_policy_name(job_name: str) -> str:
    return f"{job_name}-ray"


def job_labels(job_name: str) -> dict[str, str]:
    return {LABEL_JOB: job_name, LABEL_MANAGED_BY: MANAGED_BY}


def owner_reference(job_name: str, uid: str) -> dict:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job_name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def spec_digest(spec_wire: dict[str, Any]) -> str:
    """SHA-256 of a wire spec without its in-place fields (canonical JSON)."""
    fixed = {key: value for key, value in spec_wire.items() if key not in IN_PLACE}
    return hashlib.sha256(json.dumps(fixed, separators=(",", ":"), sort_keys=True).encode()).hexdigest()
