"""What `cluster.py up --node` puts on the node after it is Ready: the RLHF operator installed by
its Helm chart (helm/rlhf-operator) with the locally built images, and the demo volumes a job such
as examples/tiny-grpo-cpu-cluster.yaml mounts (the tiny model and prompts of `python -m
rlhf_trainer.demo`, and a checkpoint volume), as PersistentVolumeClaims bound to hostPath
PersistentVolumes, the way an admin would provision them: the pods themselves mount only claims
(tenant pods run under the restricted Pod Security level, where hostPath is refused).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import node
import node_images
from e2e_kube import ControlPlane, Kubectl

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "rlhf-operator"
OPERATOR_NAMESPACE = "rlhf-system"
RELEASE = "rlhf"
VOLUMES = node.ROOT / "volumes"
DEMO_SOURCE = REPO / ".cache" / "demo"
DATA_CLAIM, CHECKPOINT_CLAIM = "rlhf-demo-data", "rlhf-demo-checkpoints"
TRAINER_UID = 10001  # the trainer image's user (operator/rlhf_operator/isolation.py)


def helm_values() -> list[str]:
    """The chart values that point it at the local images (docs/images.md lists them)."""
    operator, trainer = node_images.image_name("operator"), node_images.image_name("trainer-cpu")
    return [
        f"--set=image.repository={operator.rsplit(':', 1)[0]}",
        f"--set=image.tag={operator.rsplit(':', 1)[1]}",
        f"--set=operator.trainerImage.repository={trainer.rsplit(':', 1)[0]}",
        f"--set=operator.trainerImage.tag={trainer.rsplit(':', 1)[1]}",
    ]


def install_operator(
    bin_dir: Path, kubeconfig: Path, archives: dict[str, Path], *, extra: tuple[str, ...] = ()
) -> None:
    """`helm upgrade --install` of the chart in rlhf-system; waits for the operator's Deployment.
    The operator image's archive name (a hash of its inputs) is a pod annotation, so a rebuilt
    image under the same tag rolls the Deployment."""
    archive = archives[node_images.image_name("operator")].name
    cmd = [
        str(bin_dir / "helm"),
        f"--kubeconfig={kubeconfig}",
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        f"--namespace={OPERATOR_NAMESPACE}",
        "--create-namespace",
        "--wait",
        "--timeout=300s",
        *helm_values(),
        f"--set-string=podAnnotations.rlhf\\.io/image-build={archive.split('.')[0]}",
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"helm install of {CHART} failed: {proc.stderr.strip()}")


def demo_files(python: str | None = None) -> Path:
    """.cache/demo (the tiny model and prompts), built with the project's Python if missing."""
    if not (DEMO_SOURCE / "prompts.jsonl").exists():
        python = python or str(REPO / ".venv" / "bin" / "python")
        if not Path(python).exists():
            python = sys.executable
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{REPO / 'trainer'}:{REPO / 'operator'}"}
        subprocess.run(
            [python, "-m", "rlhf_trainer.demo", "--root", str(DEMO_SOURCE)], check=True, env=env, cwd=REPO
        )
    return DEMO_SOURCE


def seed_demo_volumes(kubectl: Callable[..., subprocess.CompletedProcess], namespace: str) -> None:
    """PersistentVolumes (hostPath under node.ROOT/volumes/<namespace>) and the claims
    rlhf-demo-data (read-only: the demo model and prompts) and rlhf-demo-checkpoints in namespace."""
    source = demo_files()
    data, checkpoints = VOLUMES / namespace / "data", VOLUMES / namespace / "checkpoints"
    if not data.is_dir():
        shutil.copytree(source, data)
        subprocess.run(["chmod", "-R", "a+rX", str(data)], check=True)
    checkpoints.mkdir(parents=True, exist_ok=True)
    os.chown(checkpoints, TRAINER_UID, TRAINER_UID)
    docs = []
    for claim, path, mode in (
        (DATA_CLAIM, data, "ReadOnlyMany"),
        (CHECKPOINT_CLAIM, checkpoints, "ReadWriteOnce"),
    ):
        pv = f"{namespace}-{claim}"
        docs.append(
            f"""apiVersion: v1
kind: PersistentVolume
metadata: {{name: {pv}, labels: {{rlhf.io/e2e-node: "true"}}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [{mode}]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {{namespace: {namespace}, name: {claim}}}
  hostPath: {{path: {path}, type: Directory}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {claim}, namespace: {namespace}}}
spec:
  accessModes: [{mode}]
  storageClassName: ""
  volumeName: {pv}
  resources: {{requests: {{storage: 1Gi}}}}
"""
        )
    kubectl("apply", "-f", "-", input="---\n".join(docs))


@dataclass(frozen=True)
class NodeCluster:
    """What the node_cluster fixture hands out (e2e/conftest.py)."""

    control_plane: ControlPlane
    kubectl: Kubectl
    node_name: str = node.NODE_NAME
    operator_namespace: str = OPERATOR_NAMESPACE
    images: dict[str, str] = field(
        default_factory=lambda: {
            "operator": node_images.image_name("operator"),
            "trainer-cpu": node_images.image_name("trainer-cpu"),
            "pause": node.SANDBOX_IMAGE,
        }
    )

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.control_plane.bin("helm")), f"--kubeconfig={self.control_plane.kubeconfig}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=check)

    def job_namespace(self, base: str) -> str:
        """A fresh namespace with the demo claims (deleted by the caller: kubectl.delete_namespace)."""
        name = self.kubectl.create_namespace(base)
        seed_demo_volumes(self.kubectl, name)
        return name
