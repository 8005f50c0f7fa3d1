"""The Kubernetes manifests the docs tell a user to apply (examples/cluster/) are accepted by the
API server in a namespace that enforces the restricted Pod Security Standard, as the chart's
security guide asks tenants' namespaces to (docs/security.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

CLUSTER_EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "cluster"


@pytest.mark.parametrize("name", sorted(p.name for p in CLUSTER_EXAMPLES.glob("*.yaml")))
def test_a_docs_manifest_passes_the_api_server_under_restricted_pod_security(name, kubectl, namespace):
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/warn=restricted")  # fmt: skip
    proc = kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", str(CLUSTER_EXAMPLES / name),
        namespace=namespace, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
