"""Pytest fixtures for tests against the real control plane of e2e/cluster.py.

Every test under e2e/ is marked `e2e` (and should say so itself: `pytestmark = pytest.mark.e2e`).
`pytest e2e` is enough: the binaries are built (or found in ~/.cache/rlhf-operator-e2e/) once after
collection, before any test and outside pytest-timeout, and the cluster is brought up on first use.

Fixtures
--------
control_plane (session) -> ControlPlane
    Brings the control plane up if it is not (reuses one started by `make cluster-up` or by a
    concurrent pytest session). At the end of the session it is stopped only if a pytest session
    started it and no other live session uses it; RLHF_E2E_KEEP=1 keeps it running for the next run.
    Attributes: kubeconfig (Path, admin in system:masters), server (https URL), ca_file (Path),
    bin_dir (Path), log_dir (Path); bin("helm") -> Path of a built binary; env -> dict for
    subprocess.run(env=...) with KUBECONFIG set and bin_dir first on PATH.
kubeconfig (session) -> Path
    The admin kubeconfig, e.g. for `kubernetes.config.load_kube_config(str(kubeconfig))` or kopf.
kubectl (session) -> Kubectl
    kubectl("get", "pods", namespace=ns) -> CompletedProcess; raises KubectlError (with stderr)
    on a non-zero exit unless check=False. kubectl.json("get", "rlhfjob", "x", namespace=ns) -> dict
    (adds -o json). kubectl.apply(manifest, namespace=ns) takes YAML text, a dict or a Path.
namespace (function) -> str
    A fresh namespace named after the test, deleted (without waiting) after it.
make_sa_kubeconfig (function) -> callable(namespace, service_account, *, create=True) -> Path
    A kubeconfig that authenticates as the service account with a TokenRequest token (kubectl
    create token); creates the ServiceAccount unless create=False. RBAC applies to it.
node_cluster (session) -> node_workloads.NodeCluster
    A real node (e2e/node.py: containerd, kubelet, CNI bridge, kube-proxy, CoreDNS, kube-scheduler),
    the KubeRay operator and the RLHF operator installed by helm/rlhf-operator with the local images
    (node_images.py). Needs root. When a selected test uses it, the whole session's control plane
    is started with the node (`cluster.py up --node`), and its tests are marked `node`; `make test`
    runs them in a pytest run of their own (`-m node`). Attributes: control_plane, kubectl,
    node_name, operator_namespace, images ({"operator", "trainer-cpu", "pause"} -> image name);
    helm(*args) -> CompletedProcess; job_namespace(base) -> a fresh namespace with the demo claims
    rlhf-demo-data and rlhf-demo-checkpoints (as examples/tiny-grpo-cpu-cluster.yaml mounts).
node_namespace (function) -> str
    node_cluster.job_namespace(test name), deleted (without waiting) after the test.
kuberay_operator (module) -> ControlPlane
    The same control plane with the KubeRay operator running for the test module (built on first
    use, a few minutes cold; log: .cache/e2e/logs/kuberay-operator.log), stopped after the module
    unless it was already running. Without it the ray.io CRDs exist but nothing acts on them, so
    tests may write RayJob status themselves.

Helpers: `from e2e_kube import Kubectl, KubectlError` (e.g. Kubectl(kubectl.binary, sa_kubeconfig)
acts as a service account). Environment: RLHF_E2E_KEEP=1 (leave the cluster running),
RLHF_E2E_CRDS=DIR (install CRDs from DIR instead of crds/), RLHF_E2E_CACHE_DIR, RLHF_E2E_GO_JOBS.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # import-mode independent
import cluster  # noqa: E402
import cluster_build  # noqa: E402
import node_images  # noqa: E402
import node_workloads  # noqa: E402
from e2e_kube import ControlPlane, Kubectl  # noqa: E402

E2E_DIR = Path(__file__).resolve().parent
WITH_NODE = pytest.StashKey[bool]()


def _uses_node(item: pytest.Item) -> bool:
    return "node_cluster" in getattr(item, "fixturenames", ())


@pytest.hookimpl(tryfirst=True)  # before -m selects on the marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)
        if _uses_node(item):
            item.add_marker(pytest.mark.node)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build (or link cached) binaries before the first e2e test, so a cold build (many minutes)
    does not count against a test's timeout. Nothing happens when no e2e test was selected; the
    KubeRay operator is built only when a selected test uses the kuberay_operator fixture."""
    selected = [i for i in session.items if i.get_closest_marker("e2e")]
    if session.config.option.collectonly or not selected:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")

    def log(msg: str) -> None:
        if reporter is not None:
            reporter.write_line(f"[e2e] {msg}")

    with_node = any(_uses_node(i) for i in selected)
    session.config.stash[WITH_NODE] = with_node
    kuberay = with_node or any("kuberay_operator" in getattr(i, "fixturenames", ()) for i in selected)
    cluster_build.build_all(cluster.BIN_DIR, kuberay=kuberay, log=log)
    if any("kueue" in getattr(i, "fixturenames", ()) for i in selected):
        import kueue  # the Kueue controller (e2e/test_kueue.py): a long build when cold

        kueue.ensure_kueue(log=log)
    if with_node:  # minutes cold (Go builds, debootstrap, pip in the image builds): before any timeout
        node_images.prepare_node(cluster.BIN_DIR, log=log)


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> ControlPlane:
    holder = os.getpid()
    cluster.add_lease(holder)
    try:
        state = cluster.up(started_by="pytest", with_node=request.config.stash.get(WITH_NODE, False))
    except BaseException:
        cluster.leave(holder)
        raise
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.KUBECONFIG),
        "PATH": f"{cluster.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    yield ControlPlane(
        kubeconfig=cluster.KUBECONFIG,
        server=state["server"],
        bin_dir=cluster.BIN_DIR,
        log_dir=cluster.LOG_DIR,
        ca_file=cluster.PKI_DIR / "ca.crt",
        env=env,
    )
    if os.environ.get("RLHF_E2E_KEEP") != "1":
        cluster.leave(holder)


@pytest.fixture(scope="module")
def kuberay_operator(control_plane: ControlPlane) -> ControlPlane:
    was_running = cluster.alive("kuberay-operator")
    cluster.up(kuberay=True, started_by="pytest")
    yield control_plane
    if not was_running:  # the next module sees the cluster as it was: no controller acting on ray.io
        cluster.stop_kuberay()


@pytest.fixture(scope="session")
def node_cluster(control_plane: ControlPlane, kubectl: Kubectl) -> node_workloads.NodeCluster:
    if not cluster.read_state().get("node"):
        pytest.fail("the control plane runs without a node (started before this session): `cluster.py down`")
    return node_workloads.NodeCluster(control_plane=control_plane, kubectl=kubectl)


@pytest.fixture
def node_namespace(node_cluster: node_workloads.NodeCluster, request: pytest.FixtureRequest) -> str:
    name = node_cluster.job_namespace(request.node.name)
    yield name
    node_cluster.kubectl.delete_namespace(name)


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    return Kubectl(control_plane.bin("kubectl"), control_plane.kubeconfig)


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> str:
    name = kubectl.create_namespace(request.node.name)
    yield name
    kubectl.delete_namespace(name)


@pytest.fixture
def make_sa_kubeconfig(kubectl: Kubectl, control_plane: ControlPlane, tmp_path: Path):
    def make(namespace: str, service_account: str, *, create: bool = True, duration: str = "2h") -> Path:
        if create:
            kubectl("create", "serviceaccount", service_account, namespace=namespace)
        token = kubectl(
            "create", "token", service_account, f"--duration={duration}", namespace=namespace
        ).stdout.strip()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "sa",
            "clusters": [
                {
                    "name": "rlhf-e2e",
                    "cluster": {
                        "server": control_plane.server,
                        "certificate-authority": str(control_plane.ca_file),
                    },
                }
            ],
            "users": [{"name": service_account, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "sa",
                    "context": {"cluster": "rlhf-e2e", "user": service_account, "namespace": namespace},
                }
            ],
        }
        path = tmp_path / f"kubeconfig-{namespace}-{service_account}"
        path.write_text(yaml.safe_dump(config))
        return path

    return make
