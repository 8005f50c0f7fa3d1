"""What keeps one job's pods apart from everything else (pure).

- The restricted Pod Security Standard: every Ray pod and KubeRay's submitter run as the trainer
  image's non-root user, with fsGroup for the checkpoint volume, no privilege escalation, no
  capabilities and the runtime's default seccomp profile.
- The per-job NetworkPolicy `<job>-ray` around the job's Ray pods.
"""

from __future__ import annotations

from typing import Any

from . import naming
from .policy import Policy, operator_namespace

DASHBOARD_PORT = 8265
# The uid/gid of the trainer image (images/trainer/Dockerfile); fsGroup makes the checkpoint
# volume writable by it.
TRAINER_UID = 10001
POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": TRAINER_UID,
    "runAsGroup": TRAINER_UID,
    "fsGroup": TRAINER_UID,
    # A large checkpoint volume is chowned only when its root does not match already.
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def render_network_policy(job_name: str, metadata: dict[str, Any], policy: Policy) -> dict[str, Any]:
    """Ingress to the job's Ray pods: from each other (every port: GCS, Ray's worker ports, ...),
    from the operator's and the control namespaces (dashboard and metrics: KubeRay polls the
    dashboard), and from monitoring namespaces (metrics only). Everything else is dropped."""
    settings = policy.network_policy
    control = [operator_namespace(policy), *settings.control_namespaces]
    metrics_ports = [
        {"protocol": "TCP", "port": naming.RAY_METRICS_PORT},
        {"protocol": "TCP", "port": naming.TRAINER_METRICS_PORT},
    ]
    ingress: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": naming.job_labels(job_name)}}]},
        {
            "from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
                for namespace in dict.fromkeys(control)
            ],
            "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}, *metrics_ports],
        },
    ]
    if settings.monitoring_namespace_labels:
        ingress.append(
            {
                "from": [{"namespaceSelector": {"matchLabels": dict(settings.monitoring_namespace_labels)}}],
                "ports": metrics_ports,
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": naming.job_labels(job_name)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
