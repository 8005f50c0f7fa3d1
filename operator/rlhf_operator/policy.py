"""The platform policy: what a tenant who may create RLHFJobs may ask of the cluster (pure).

The cluster admin owns it (the chart's `policy:` values, rendered into a ConfigMap the operator
reads at start; `rlhf validate --policy FILE`). `check_spec` returns every breach of a job spec as
`(field path, message)`; `render` raises them all as one `PolicyViolation` before it builds
anything, so a breaching job ends Failed (reason PolicyViolation) and nothing is created.

Defaults (`Policy()`) are the chart's defaults: only the operator's own trainer image repository,
volumes of type persistentVolumeClaim, emptyDir and configMap, no priority class, node selectors
and tolerations only from the lists, no env that changes what the trainer loads or how Ray
authenticates, no labels or annotations under the platform's prefixes, and caps on GPUs, pods and
reward entries.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from rlhf_trainer.api.base import ApiModel
from rlhf_trainer.api.kube import Toleration
from rlhf_trainer.api.spec import RLHFJobSpec
from rlhf_trainer.api.validation import load_model

from .errors import RenderError

POLICY_ENV = "RLHF_OPERATOR_POLICY"  # path of the policy file the chart mounts
OPERATOR_NAMESPACE_ENV = "POD_NAMESPACE"
DEFAULT_OPERATOR_NAMESPACE = "rlhf-system"

VolumeType = Literal["persistentVolumeClaim", "emptyDir", "configMap", "secret", "hostPath", "nfs"]
VOLUME_FIELDS = {
    "persistent_volume_claim": "persistentVolumeClaim",
    "empty_dir": "emptyDir",
    "config_map": "configMap",
    "secret": "secret",
    "host_path": "hostPath",
    "nfs": "nfs",
}

DEFAULT_FORBIDDEN_ENV = (
    # what the dynamic loader and Python load before any trainer code runs
    "LD_*",
    "PATH",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONINSPECT",
    "PYTHONBREAKPOINT",
    "PYTHONSAFEPATH",
    "HOME",
    # Ray's authentication (a tenant value would win over KubeRay's) and the operator's own
    "RAY_AUTH_*",
    "RAY_ENABLE_K8S_TOKEN_AUTH",
    "RAY_ADDRESS",
    "RAY_DASHBOARD_ADDRESS",
    "RAY_JOB_SUBMISSION_ID",
    "RLHF_*",
    "KUBERNETES_*",
)
DEFAULT_RESERVED_PREFIXES = (
    "kubernetes.io/",
    "k8s.io/",
    "x-k8s.io/",
    "ray.io/",
    "rlhf.io/",
    "openshift.io/",
    "istio.io/",
    "prometheus.io/",
)


class NetworkPolicySettings(ApiModel):
    enabled: bool = Field(
        default=True, description="Render a NetworkPolicy per job that admits only its own pods to them."
    )
    control_namespaces: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Namespaces (besides the operator's) whose pods may reach the Ray head's dashboard "
        "and metrics ports: KubeRay's operator polls the dashboard, so list its namespace.",
    )
    monitoring_namespace_labels: dict[str, str] = Field(
        default_factory=lambda: {"rlhf.io/monitoring": "true"},
        max_length=16,
        description="Namespaces carrying all these labels may scrape the metrics ports (8080, 9400).",
    )


class Policy(ApiModel):
    """What the cluster admin allows an RLHFJob to ask for."""

    allowed_images: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="Allowed trainer images: an entry `registry/repo` admits every tag and digest of that "
        "repository; an entry ending in `/` admits everything under that prefix. Empty: only the "
        "repository of the operator's default trainer image.",
    )
    allowed_volume_types: list[VolumeType] = Field(
        default_factory=lambda: ["persistentVolumeClaim", "emptyDir", "configMap"],
        description="Volume types allowed in spec.template.volumes and spec.checkpoint.volume.",
    )
    allowed_priority_classes: list[str] = Field(
        default_factory=list, max_length=64, description="PriorityClass names a job may use. Empty: none."
    )
    free_node_selectors: bool = Field(
        default=False, description="true: any nodeSelector; false: only allowedNodeSelectors."
    )
    allowed_node_selectors: dict[str, list[str]] = Field(
        default_factory=dict,
        max_length=64,
        description="Node label key -> allowed values (`*` admits any value).",
    )
    free_tolerations: bool = Field(
        default=False, description="true: any toleration; false: only allowedTolerations."
    )
    allowed_tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        max_length=64,
        description="Tolerations a job may carry (each must equal one of these).",
    )
    forbidden_env: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FORBIDDEN_ENV),
        max_length=256,
        description="Env names (shell globs) refused in spec.template.env.",
    )
    reserved_label_prefixes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_RESERVED_PREFIXES),
        max_length=64,
        description="Label/annotation key prefixes refused in spec.template (a `x.io/` entry covers "
        "its subdomains, `*.x.io/`).",
    )
    max_gpus: int = Field(default=512, ge=0, description="Most GPUs one job may request.")
    max_pods: int = Field(default=128, ge=1, description="Most worker pods one job may have.")
    max_reward_entries: int = Field(default=8, ge=1, le=16, description="Most entries in spec.models.reward.")
    operator_namespace: str = Field(
        default="", description='The operator\'s namespace ("": $POD_NAMESPACE, else rlhf-system).'
    )
    network_policy: NetworkPolicySettings = Field(
        default_factory=NetworkPolicySettings, description="The per-job NetworkPolicy."
    )


class PolicyViolation(RenderError):
    """A job that breaches the platform policy; carries every breach."""

    reason = "PolicyViolation"

    def __init__(self, violations: list[tuple[str, str]]):
        self.violations = violations
        ValueError.__init__(self, "; ".join(f"{path}: {message}" for path, message in violations))
        self.field = violations[0][0]


def load_policy(path: str | Path) -> Policy:
    """A policy file: the policy itself, or a chart values file holding it under `policy:`."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if isinstance(data, dict) and isinstance(data.get("policy"), dict):
        data = data["policy"]
    return load_model(Policy, data, source=str(path), prefix="policy")


@functools.lru_cache(maxsize=1)
def operator_policy() -> Policy:
    """The running operator's policy: the file $RLHF_OPERATOR_POLICY names, else the defaults."""
    path = os.environ.get(POLICY_ENV)
    return load_policy(path) if path else Policy()


def values_schema() -> dict[str, Any]:
    """The JSON schema of the chart's `policy:` values (values.schema.json holds it; a test checks)."""
    from rlhf_trainer.api.crd import model_schema

    raw = model_schema(
        Policy, "The platform policy the operator enforces on every RLHFJob (docs/security.md)."
    )
    return _closed(json.loads(json.dumps(raw, default=lambda model: model.to_wire())))


def _closed(schema: Any) -> Any:
    """Unknown keys are errors in the chart's values."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            _closed(value)
    elif isinstance(schema, list):
        for value in schema:
            _closed(value)
    return schema


def operator_namespace(policy: Policy) -> str:
    return policy.operator_namespace or os.environ.get(OPERATOR_NAMESPACE_ENV) or DEFAULT_OPERATOR_NAMESPACE


# --------------------------------------------------------------------------------------------
# checks


def check_spec(spec: RLHFJobSpec, policy: Policy, default_image: str) -> list[tuple[str, str]]:
    """Every breach of `policy` by `spec`, as (field path, message); [] when it complies."""
    violations: list[tuple[str, str]] = []
    violations += _check_image(spec, policy, default_image)
    violations += _check_volumes(spec, policy)
    violations += _check_scheduling(spec, policy)
    violations += _check_env(spec, policy)
    violations += _check_metadata(spec, policy)
    violations += _check_caps(spec, policy)
    return violations


def enforce(spec: RLHFJobSpec, policy: Policy, default_image: str) -> None:
    violations = check_spec(spec, policy, default_image)
    if violations:
        raise PolicyViolation(violations)


def image_repository(image: str) -> str:
    """`registry:5000/team/trainer:1.2@sha256:...` -> `registry:5000/team/trainer`."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def image_allowed(image: str, policy: Policy, default_image: str) -> bool:
    allowed = policy.allowed_images or [image_repository(default_image)]
    repository = image_repository(image)
    for entry in allowed:
        if entry.endswith("/") and image.startswith(entry):
            return True
        if repository == image_repository(entry) and (entry == repository or image == entry):
            return True
    return False


def _check_image(spec: RLHFJobSpec, policy: Policy, default_image: str) -> list[tuple[str, str]]:
    if spec.image is None or image_allowed(spec.image, policy, default_image):
        return []
    allowed = policy.allowed_images or [image_repository(default_image)]
    return [("spec.image", f"{spec.image!r} is not an allowed image (allowed: {', '.join(allowed)})")]


def _volume_type(source: Any) -> str:
    for field, wire in VOLUME_FIELDS.items():
        if getattr(source, field, None) is not None:
            return wire
    return "unknown"


def _check_volumes(spec: RLHFJobSpec, policy: Policy) -> list[tuple[str, str]]:
    allowed = set(policy.allowed_volume_types)
    found = [(f"spec.template.volumes[{i}]", v) for i, v in enumerate(spec.template.volumes)]
    if spec.checkpoint is not None and spec.checkpoint.volume is not None:
        found.append(("spec.checkpoint.volume", spec.checkpoint.volume))
    out = []
    for path, source in found:
        kind = _volume_type(source)
        if kind not in allowed:
            out.append(
                (
                    f"{path}.{kind}",
                    f"volume type {kind} is not allowed (allowed: {', '.join(sorted(allowed))})",
                )
            )
    return out


def _check_scheduling(spec: RLHFJobSpec, policy: Policy) -> list[tuple[str, str]]:
    out = []
    name = spec.priority_class_name
    if name is not None and name not in policy.allowed_priority_classes:
        allowed = ", ".join(policy.allowed_priority_classes) or "none"
        out.append(
            ("spec.priorityClassName", f"{name!r} is not an allowed priority class (allowed: {allowed})")
        )
    if not policy.free_node_selectors:
        for key, value in spec.template.node_selector.items():
            values = policy.allowed_node_selectors.get(key)
            if values is None or not ("*" in values or value in values):
                out.append(
                    (f"spec.template.nodeSelector.{key}", f"{key}={value} is not an allowed node selector")
                )
    if not policy.free_tolerations:
        for index, toleration in enumerate(spec.template.tolerations):
            if not any(_same_toleration(toleration, allowed) for allowed in policy.allowed_tolerations):
                out.append((f"spec.template.tolerations[{index}]", "is not an allowed toleration"))
    return out


def _same_toleration(job: Toleration, allowed: Toleration) -> bool:
    # An unset operator means Equal (core/v1); compare as the kubelet would read them.
    def wire(t: Toleration) -> dict[str, Any]:
        data = t.to_wire()
        data.setdefault("operator", "Equal")
        return data

    return wire(job) == wire(allowed)


def _check_env(spec: RLHFJobSpec, policy: Policy) -> list[tuple[str, str]]:
    out = []
    for index, var in enumerate(spec.template.env):
        pattern = next((p for p in policy.forbidden_env if fnmatch.fnmatchcase(var.name, p)), None)
        if pattern is not None:
            out.append(
                (f"spec.template.env[{index}].name", f"{var.name} is forbidden by the platform policy")
            )
    return out


def reserved_prefix(key: str, policy: Policy) -> str | None:
    """The reserved prefix a label/annotation key falls under, or None."""
    if "/" not in key:
        return None
    domain = key.split("/", 1)[0].lower()
    for prefix in policy.reserved_label_prefixes:
        reserved = prefix.rstrip("/").lower()
        if domain == reserved or domain.endswith("." + reserved):
            return prefix
    return None


def _check_metadata(spec: RLHFJobSpec, policy: Policy) -> list[tuple[str, str]]:
    out = []
    for kind, mapping in (("labels", spec.template.labels), ("annotations", spec.template.annotations)):
        for key in mapping:
            prefix = reserved_prefix(key, policy)
            if prefix is not None:
                out.append(
                    (f"spec.template.{kind}.{key}", f"the prefix {prefix} is reserved by the platform")
                )
    return out


def _check_caps(spec: RLHFJobSpec, policy: Policy) -> list[tuple[str, str]]:
    out = []
    rewards = len(spec.models.reward)
    if rewards > policy.max_reward_entries:
        out.append(
            (
                "spec.models.reward",
                f"{rewards} entries, the platform allows at most {policy.max_reward_entries}",
            )
        )
    # GPUs come from the roles only (and count against maxGpus): none through the pods' resources.
    for part, resources in (("head", spec.head.resources), ("workers", spec.workers.resources)):
        for kind in ("requests", "limits"):
            for name in getattr(resources, kind):
                if "gpu" in name.lower():
                    out.append(
                        (
                            f"spec.{part}.resources.{kind}.{name}",
                            "GPUs are given to the roles (spec.models), not to the pods' resources",
                        )
                    )
    gpus = requested_gpus(spec)
    if gpus > policy.max_gpus:
        out.append(
            ("spec.models", f"requests {gpus} GPUs, the platform allows at most {policy.max_gpus} per job")
        )
    return out


def requested_gpus(spec: RLHFJobSpec) -> int:
    """An upper bound of the job's GPUs, linear in the spec (checked before anything is packed)."""
    models = spec.models
    roles = [models.actor.gpus]
    roles += [role.gpus for role in (models.critic, models.reference) if role is not None]
    roles += [1 if r.gpus is None else r.gpus for r in models.reward if r.model is not None]
    if models.colocate.all:
        return models.actor.gpus
    rollout = models.rollout
    if rollout.engine == "vllm":
        roles.append(rollout.engines * rollout.tensor_parallel_size)
    elif models.actor.gpus:
        roles.append(rollout.engines)
    return sum(roles)


def check_pods(pods: int, policy: Policy) -> None:
    if pods > policy.max_pods:
        raise PolicyViolation(
            [
                (
                    "spec.workers.gpusPerPod",
                    f"the job needs {pods} worker pods, the platform allows at most {policy.max_pods}",
                )
            ]
        )
