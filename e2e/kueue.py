"""The Kueue controller for the e2e control plane, built from its Go module at the release pinned in
e2e/gomod/kueue/go.mod and cached like the control-plane binaries (cluster_build.ensure_built:
~/.cache/rlhf-operator-e2e/kueue-<version>-<hash>/bin/kueue).

What `start_kueue` sets up against the running control plane (cluster.py):
- Kueue's CRDs (config/components/crd/bases of the pinned module), applied server-side.
- Its webhooks on loopback: the mutating/validating configurations of the module with only the
  RayJob and kueue.x-k8s.io webhooks kept (the others' frameworks are off, so their paths would not
  be served), each pointed at https://127.0.0.1:<port>/<path> with the e2e CA as caBundle. The
  serving certificate is signed by the e2e CA for IP 127.0.0.1, so the apiserver can verify it;
  Kueue's own certificate management is off.
- The controller, as admin, with one integration (ray.io/rayjob), no leader election, and the
  on-demand visibility server off (it would need an APIService and a fixed port). Kueue reads its
  metrics certificate from the fixed path /etc/kueue/metrics/certs when its own certificate
  management is off: one is written there once per machine.

    python e2e/kueue.py build    # build (or find) the binary; prints its path
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster  # noqa: E402
import cluster_pki  # noqa: E402
from cluster_build import GoModule, ensure_built, go_env  # noqa: E402

KUEUE_MODULE = "sigs.k8s.io/kueue"
KUEUE = GoModule(name="kueue", main_module=KUEUE_MODULE, packages=(f"{KUEUE_MODULE}/cmd/kueue",))
NAMESPACE = "kueue-system"
WEBHOOK_PATHS = re.compile(r"^/(mutate|validate)-(ray-io-v1-rayjob|kueue-x-k8s-io-)")
WEBHOOK_CONFIGS = ("rlhf-e2e-kueue-mutating", "rlhf-e2e-kueue-validating")


def queue_documents(namespace: str, queue: str, flavor: str, cpu: str) -> list[dict[str, Any]]:
    """A ResourceFlavor, a ClusterQueue named after `namespace` admitting only it (`cpu` CPUs,
    64Gi, preemption by priority within the queue) and the LocalQueue `queue` in it."""
    api = "kueue.x-k8s.io/v1beta2"
    resources = [{"name": "cpu", "nominalQuota": cpu}, {"name": "memory", "nominalQuota": "64Gi"}]
    return [
        {"apiVersion": api, "kind": "ResourceFlavor", "metadata": {"name": flavor}},
        {
            "apiVersion": api,
            "kind": "ClusterQueue",
            "metadata": {"name": namespace},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory"],
                        "flavors": [{"name": flavor, "resources": resources}],
                    }
                ],
            },
        },
        {
            "apiVersion": api,
            "kind": "LocalQueue",
            "metadata": {"name": queue, "namespace": namespace},
            "spec": {"clusterQueue": namespace},
        },
    ]


def ensure_kueue(*, log: Any = print) -> Path:
    """The kueue binary, built on first use."""
    return ensure_built(KUEUE, log=log) / "bin" / "kueue"


def module_dir() -> Path:
    """The pinned module's source (for its CRDs and webhook manifests): a download, not a build."""
    version = KUEUE.required_version(KUEUE_MODULE)
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{KUEUE_MODULE}@{version}"],
        cwd=KUEUE.dir,
        env=go_env(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Path(json.loads(out)["Dir"])


def loopback_webhooks(manifests: str, port: int, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's webhook configurations with only the RayJob and Kueue webhooks, served on loopback."""
    out = []
    for doc, name in zip(
        [d for d in yaml.safe_load_all(manifests) if d],
        WEBHOOK_CONFIGS,
        strict=True,
    ):
        doc = copy.deepcopy(doc)
        doc["metadata"] = {"name": name}
        kept = []
        for hook in doc["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            if WEBHOOK_PATHS.match(path):
                hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}
                kept.append(hook)
        doc["webhooks"] = kept
        out.append(doc)
    return out


def configuration(webhook_port: int, probe_port: int, metrics_port: int, cert_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{probe_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "webhook": {"port": webhook_port, "host": "127.0.0.1", "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": ["ray.io/rayjob"]},
    }


@dataclass
class KueueController:
    process: subprocess.Popen[bytes]
    log_path: Path
    kubectl: Any

    def log(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the controller and remove its webhooks (nothing would answer them)."""
        self.kubectl(
            "delete",
            "mutatingwebhookconfiguration,validatingwebhookconfiguration",
            *WEBHOOK_CONFIGS,
            "--ignore-not-found",
            check=False,
        )
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_kueue(
    kubectl: Any, kubeconfig: Path, pki_dir: Path, workdir: Path, free_port: Any, *, log: Any = print
) -> KueueController:
    """CRDs, loopback webhooks and the controller; returns once its webhooks answer."""
    binary = ensure_kueue(log=log)
    source = module_dir()
    crds = sorted((source / "config" / "components" / "crd" / "bases").glob("*.yaml"))
    cluster.apply_crds(crds, kubectl)
    kubectl("create", "namespace", NAMESPACE, check=False)

    cert_dir = workdir / "certs"
    cert_dir.mkdir(parents=True, exist_ok=True)
    for name in ("ca.crt", "ca.key"):
        (cert_dir / name).write_bytes((pki_dir / name).read_bytes())
    cluster_pki._signed_cert(  # the e2e CA signs the webhook's serving certificate for 127.0.0.1
        "tls",
        "/CN=kueue-webhook",
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
        cert_dir,
    )
    (cert_dir / "ca.key").unlink()

    _metrics_certificate(cert_dir)
    webhook_port, probe_port = free_port(), free_port()
    config_path = workdir / "kueue-config.yaml"
    config_path.write_text(yaml.safe_dump(configuration(webhook_port, probe_port, free_port(), cert_dir)))
    log_path = workdir / "kueue.log"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [
                str(binary),
                f"--config={config_path}",
                "--feature-gates=VisibilityOnDemand=false",
                "--zap-log-level=2",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    controller = KueueController(process, log_path, kubectl)
    try:
        _wait_ready(controller, probe_port, webhook_port)
        ca_bundle = base64.b64encode((pki_dir / "ca.crt").read_bytes()).decode()
        manifests = (source / "config" / "components" / "webhook" / "manifests.yaml").read_text()
        for doc in loopback_webhooks(manifests, webhook_port, ca_bundle):
            kubectl.apply(doc)
    except BaseException:
        controller.stop()
        raise
    return controller


# With its certificate management off, Kueue 0.17 reads its metrics server's certificate from this
# fixed path and exits when it is missing. Nothing scrapes it here: any certificate will do, so
# one is put there once per machine (atomically: parallel checkouts may race).
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")


def _metrics_certificate(cert_dir: Path) -> None:
    if (METRICS_CERT_DIR / "tls.crt").exists() and (METRICS_CERT_DIR / "tls.key").exists():
        return
    METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
    for name in ("tls.key", "tls.crt"):  # the key first: a reader that sees the cert finds both
        staging = METRICS_CERT_DIR / f".{name}.{os.getpid()}"
        staging.write_bytes((cert_dir / name).read_bytes())
        staging.replace(METRICS_CERT_DIR / name)


def _wait_ready(
    controller: KueueController, probe_port: int, webhook_port: int, timeout_s: float = 120
) -> None:
    import socket
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if controller.process.poll() is not None:
            raise RuntimeError(f"kueue exited with {controller.process.returncode}:\n{controller.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{probe_port}/readyz", timeout=2) as response:
                ready = response.status == 200
            with socket.create_connection(("127.0.0.1", webhook_port), timeout=2):
                pass
            if ready:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"kueue not ready after {timeout_s}s:\n{controller.log()}")


if __name__ == "__main__":
    if sys.argv[1:] == ["build"]:
        print(ensure_kueue())
        sys.exit(0)
    print(__doc__, file=sys.stderr)
    sys.exit(2)
