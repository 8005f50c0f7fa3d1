"""`rlhf operator`: run the operator with kopf's embedded runner.

Standalone (one replica, Deployment strategy Recreate) unless --peering names a kopf peering
object, in which case replicas coordinate through it and only one is active. Cluster-wide when no
--namespace is given. Prometheus /metrics on --metrics-port, kopf's liveness probe at
/healthz on --liveness-port.

Environment: RLHF_OPERATOR_RESYNC_SECONDS (default 30) sets how often every job is reconciled
again (the safety net for missed events); RLHF_OPERATOR_OUTPUT_DIR, where the trainer writes its
local output in the pod; RLHF_OPERATOR_RAYJOB_MANAGED_BY, the RayJobs' spec.managedBy (e.g.
kueue.x-k8s.io/multikueue; unset: KubeRay).
"""

from __future__ import annotations

import argparse
import logging
import os

import kopf
import prometheus_client

from . import decisions, policy, render
from .kube import Kube, load_api_client
from .metrics import OperatorMetrics
from .reconciler import Reconciler

STORAGE_PREFIX = "operator.rlhf.io"
DEFAULT_RESYNC_SECONDS = 30.0


def operator_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # A watch that hangs (a dropped connection the client does not notice) is cut and restarted.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    # kopf keeps its handler progress and diff base in annotations, never in .status: the status
    # belongs to the operator's own fields and the trainer's.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=STORAGE_PREFIX)
    # Kubernetes events come from the reconciler (one per phase change); kopf adds only its warnings.
    settings.posting.level = logging.WARNING
    return settings


def run_operator(args: argparse.Namespace) -> int:
    kopf.configure(verbose=args.verbose)
    logging.getLogger("rlhf_operator").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    namespaces = list(args.namespace or [])
    # The platform policy is read once, here: a broken policy file stops the operator at start
    # rather than failing every job.
    policy.operator_policy()
    metrics = OperatorMetrics()
    prometheus_client.disable_created_metrics()
    prometheus_client.start_http_server(args.metrics_port, registry=metrics.registry)
    reconciler = Reconciler(
        Kube(load_api_client()),
        decisions.Settings(
            default_image=args.trainer_image,
            output_dir=os.environ.get("RLHF_OPERATOR_OUTPUT_DIR", render.DEFAULT_OUTPUT_DIR),
            rayjob_managed_by=os.environ.get("RLHF_OPERATOR_RAYJOB_MANAGED_BY") or None,
        ),
        metrics,
    )
    memo = kopf.Memo(
        reconciler=reconciler,
        metrics=metrics,
        namespaces=namespaces,
        resync_seconds=float(os.environ.get("RLHF_OPERATOR_RESYNC_SECONDS", DEFAULT_RESYNC_SECONDS)),
    )
    from . import (
        handlers,  # noqa: F401 - registers the kopf handlers
        pipeline_handlers,  # noqa: F401 - and those of RLHFPipelines
    )

    kopf.run(
        standalone=args.peering is None,
        peering_name=args.peering,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz",
        settings=operator_settings(),
        memo=memo,
    )
    return 0
