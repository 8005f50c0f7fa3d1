"""A real Kubernetes control plane on loopback for the e2e tests: etcd, kube-apiserver (RBAC, service
accounts, client certificates), kube-controller-manager (garbage collector, namespace and service
account controllers), optionally the KubeRay operator. Built from pinned Go modules (see
cluster_build.py and e2e/README.md), no Docker, no kubelet: objects are real, pods never run.

    .venv/bin/python e2e/cluster.py build          # build/cache all binaries (KubeRay operator too)
    .venv/bin/python e2e/cluster.py up [--kuberay] # start (idempotent), install CRDs, write kubeconfig
    .venv/bin/python e2e/cluster.py up --node      # + a real node, KubeRay, the operator's chart (root)
    .venv/bin/python e2e/cluster.py images         # build the node's images (no registry, no Docker)
    .venv/bin/python e2e/cluster.py down           # stop what `up` started, remove its state
    .venv/bin/python e2e/cluster.py status         # exit 0 when up and ready
    eval "$(.venv/bin/python e2e/cluster.py env)"  # KUBECONFIG and PATH for the built kubectl/helm

State under .cache/e2e/ in the checkout: bin/ (links into ~/.cache/rlhf-operator-e2e/), logs/,
pids/, run/ (etcd data, PKI), kubeconfig, cluster.json. RLHF_E2E_KUBERAY=1 acts as `up --kuberay`.
Standard library only: any python3 >= 3.10 runs it, before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster_build  # noqa: E402
import cluster_pki  # noqa: E402
import node  # noqa: E402
import node_images  # noqa: E402
import node_workloads  # noqa: E402
from cluster_procs import ComponentProcesses  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STATE_DIR = REPO / ".cache" / "e2e"
BIN_DIR = STATE_DIR / "bin"
LOG_DIR = STATE_DIR / "logs"
PID_DIR = STATE_DIR / "pids"
RUN_DIR = STATE_DIR / "run"
PKI_DIR = RUN_DIR / "pki"
KUBECONFIG = STATE_DIR / "kubeconfig"
STATE_FILE = STATE_DIR / "cluster.json"
LEASE_DIR = STATE_DIR / "leases"
# RLHF_E2E_CRDS: install the CRDs from another directory (e.g. a variant under test) instead of crds/.
OUR_CRDS = Path(os.environ.get("RLHF_E2E_CRDS", REPO / "crds"))
KUBERAY_CRDS = STATE_DIR / "kuberay-crds"
# RayCronJob is left out: alpha, and its controller is off by default in KubeRay v1.6.
KUBERAY_CRD_PLURALS = ("rayclusters", "rayjobs", "rayservices")
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Start order; `down` stops in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kuberay-operator")
PROCS = ComponentProcesses(BIN_DIR, LOG_DIR, PID_DIR, binaries={"kuberay-operator": "ray-operator"})
# Public names for scripts that drive the cluster (bench/): is a component running, its pid, stop it.
alive, pid_of, stop = PROCS.alive, PROCS.pid_of, PROCS.stop
_alive, _stop, _start, _wait = PROCS.alive, PROCS.stop, PROCS.start, PROCS.wait


def log(msg: str) -> None:
    print(f"[cluster] {msg}", flush=True)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Serialise up/down across processes (several pytest sessions may share one checkout)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _https_ok(url: str, *, client_cert: bool) -> bool:
    if client_cert:
        ctx = ssl.create_default_context(cafile=str(PKI_DIR / "ca.crt"))
        ctx.load_cert_chain(str(PKI_DIR / "admin.crt"), str(PKI_DIR / "admin.key"))
    else:  # kube-controller-manager serves /healthz with a self-signed cert of its own
        ctx = ssl._create_unverified_context()  # noqa: S323 - loopback health probe only
    with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
        return resp.status == 200


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200


def _kubeconfig_text(server: str, user: str, cert: str, key: str) -> str:
    def b64(name: str) -> str:
        return base64.b64encode((PKI_DIR / name).read_bytes()).decode()

    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: rlhf-e2e\n  cluster:\n    server: {server}\n"
        f"    certificate-authority-data: {b64('ca.crt')}\n"
        f"users:\n- name: {user}\n  user:\n    client-certificate-data: {b64(cert)}\n"
        f"    client-key-data: {b64(key)}\n"
        f"contexts:\n- name: rlhf-e2e\n  context:\n    cluster: rlhf-e2e\n    user: {user}\n"
        "    namespace: default\ncurrent-context: rlhf-e2e\n"
    )


def kubectl(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(BIN_DIR / "kubectl"), f"--kubeconfig={KUBECONFIG}", *args],
        capture_output=True,
        text=True,
        input=input,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def read_state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {}


def _components_alive() -> bool:
    return bool(read_state()) and all(_alive(n) for n in COMPONENTS[:3])


def is_up(wait: float = 0.0) -> bool:
    """True when etcd, kube-apiserver and kube-controller-manager run and /readyz answers ok,
    trying for up to `wait` seconds (a loaded machine can make a live API server slow to answer)."""
    deadline = time.monotonic() + wait
    while _components_alive():
        with contextlib.suppress(OSError, ValueError):
            if _https_ok(f"{read_state()['server']}/readyz", client_cert=True):
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return False


def install_crds() -> None:
    """Our CRDs (every YAML in crds/) and KubeRay's RayCluster, RayJob and RayService, in one
    server-side apply: KubeRay's CRDs are too big for client-side apply's last-applied annotation."""
    files = [KUBERAY_CRDS.resolve() / f"ray.io_{plural}.yaml" for plural in KUBERAY_CRD_PLURALS]
    files += sorted(OUR_CRDS.glob("*.yaml")) if OUR_CRDS.is_dir() else []
    apply_crds(files)


def apply_crds(files: list[Path], run=None) -> None:
    """Server-side apply of CRD files (`run`: a kubectl-like callable, default this cluster's
    kubectl), then wait until every CRD is Established."""
    run = run or kubectl
    run(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=rlhf-e2e",
        *(f"--filename={f}" for f in files),
    )
    run("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")


def _start_kuberay(state: dict) -> None:
    cluster_build.link_binaries(cluster_build.ensure_built(cluster_build.KUBERAY, log=log), BIN_DIR)
    probe = _free_port()
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}
    wrapper: tuple[str, ...] = ()
    if state.get("node"):
        # KubeRay dials each head's dashboard by its Service's DNS name: in a mount namespace of
        # its own, its /etc/resolv.conf names the cluster DNS (the machine's stays untouched).
        resolv = RUN_DIR / "kuberay-resolv.conf"
        resolv.write_text(
            f"nameserver {node.DNS_IP}\nsearch svc.cluster.local cluster.local\noptions ndots:5\n"
        )
        script = f'mount --bind {resolv} /etc/resolv.conf && exec "$@"'
        wrapper = ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh")
    _start(
        "kuberay-operator",
        [
            f"--metrics-addr=127.0.0.1:{_free_port()}",
            "--enable-leader-election=false",
            f"--health-probe-bind-address=127.0.0.1:{probe}",
            "--log-stdout-encoder=console",
        ],
        env=env,
        wrapper=wrapper,
    )
    _wait("kuberay-operator", lambda: _http_ok(f"http://127.0.0.1:{probe}/readyz"), 120)
    state["kuberay"] = True
    STATE_FILE.write_text(json.dumps(state, indent=2))


def stop_kuberay() -> None:
    """Stop the KubeRay operator only; the control plane keeps running."""
    with _locked():
        _stop("kuberay-operator")
        state = read_state()
        if state:
            state["kuberay"] = False
            STATE_FILE.write_text(json.dumps(state, indent=2))


def _etcd_args(ports: dict[str, int]) -> list[str]:
    client, peer = f"http://127.0.0.1:{ports['etcd']}", f"http://127.0.0.1:{ports['etcd_peer']}"
    return [
        "--name=e2e",
        f"--data-dir={RUN_DIR / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=e2e={peer}",
        "--unsafe-no-fsync=true",  # test data: durability buys nothing
        "--log-level=warn",
    ]


def _apiserver_args(ports: dict[str, int], with_node: bool) -> list[str]:
    pki = PKI_DIR
    if with_node:
        # On the node's bridge address: pods reach it through the `kubernetes` Service, whose
        # endpoint the API server now maintains itself; kubelet serves on that address too.
        address, node_args = (
            node.NODE_IP,
            [
                "--authorization-mode=Node,RBAC",
                f"--kubelet-client-certificate={pki / 'admin.crt'}",
                f"--kubelet-client-key={pki / 'admin.key'}",
                "--kubelet-preferred-address-types=InternalIP",
            ],
        )
    else:
        # No kubelet or node network: the `kubernetes` Service's endpoints would point at loopback,
        # which validation rejects; nothing here dials it.
        address, node_args = "127.0.0.1", ["--authorization-mode=RBAC", "--endpoint-reconciler-type=none"]
    return [
        f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
        f"--bind-address={address}",
        f"--advertise-address={address}",
        f"--secure-port={ports['apiserver']}",
        f"--cert-dir={RUN_DIR / 'apiserver'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        *node_args,
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-cluster-ip-range={node.SERVICE_CIDR}",
        "--profiling=false",
    ]


def _controller_manager_args(ports: dict[str, int], kubeconfig: Path) -> list[str]:
    pki = PKI_DIR
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports['controller_manager']}",
        f"--cert-dir={RUN_DIR / 'controller-manager'}",
        "--leader-elect=false",
        "--controllers=*",  # the cloud-provider ones stay off without --cloud-provider
        # Each controller acts as its own kube-system service account, bound by the bootstrap RBAC
        # roles (system:controller:*); the manager's own user may not delete for the GC.
        "--use-service-account-credentials=true",
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
    ]


def _start_components(started_by: str, with_node: bool = False) -> dict:
    """etcd -> kube-apiserver -> kube-controller-manager, CRDs; timings of each phase in the log."""
    timings: dict[str, float] = {}
    mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        timings[name] = round(time.monotonic() - mark, 1)
        mark = time.monotonic()

    cluster_pki.generate(PKI_DIR)
    phase("pki")
    ports = {n: _free_port() for n in ("etcd", "etcd_peer", "apiserver", "controller_manager")}
    server = f"https://{node.NODE_IP if with_node else '127.0.0.1'}:{ports['apiserver']}"
    _start("etcd", _etcd_args(ports))
    etcd_health = f"http://127.0.0.1:{ports['etcd']}/health"
    _wait("etcd", lambda: b'"true"' in urllib.request.urlopen(etcd_health, timeout=2).read(), 60)
    phase("etcd")
    _start("kube-apiserver", _apiserver_args(ports, with_node))
    _wait("kube-apiserver", lambda: _https_ok(f"{server}/readyz", client_cert=True), 120)
    phase("kube-apiserver")
    KUBECONFIG.write_text(_kubeconfig_text(server, "admin", "admin.crt", "admin.key"))
    kcm_kubeconfig = RUN_DIR / "controller-manager.kubeconfig"
    kcm_kubeconfig.write_text(
        _kubeconfig_text(
            server, "system:kube-controller-manager", "controller-manager.crt", "controller-manager.key"
        )
    )
    _start("kube-controller-manager", _controller_manager_args(ports, kcm_kubeconfig))
    install_crds()
    phase("crds")
    kcm_health = f"https://127.0.0.1:{ports['controller_manager']}/healthz"
    _wait("kube-controller-manager", lambda: _https_ok(kcm_health, client_cert=False), 120)
    phase("kube-controller-manager")
    log("startup phases (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    return {
        "server": server,
        "ports": ports,
        "started_by": started_by,
        "kuberay": False,
        "node": with_node,
        "kubeconfig": str(KUBECONFIG),
        "bin_dir": str(BIN_DIR),
        "started_at": time.time(),
    }


def _node() -> node.Node:
    return node.Node(BIN_DIR, LOG_DIR, PKI_DIR, _kubeconfig_text)


def _start_node(state: dict, archives: dict[str, Path]) -> None:
    """containerd, the images, then kubelet, kube-proxy, CoreDNS and kube-scheduler (node.py)."""
    started = time.monotonic()
    the_node = _node()
    the_node.start_runtime(state["server"])
    node_images.import_into_node(archives, log=log)
    the_node.start_kube(kubectl, _free_port)
    log(f"node {node.NODE_NAME} Ready in {time.monotonic() - started:.1f}s")


def _install_workloads(archives: dict[str, Path]) -> None:
    node_images.import_into_node(archives, log=log)
    node_workloads.seed_demo_volumes(kubectl, "default")
    node_workloads.install_operator(BIN_DIR, KUBECONFIG, archives)
    log(f"RLHF operator installed by helm/rlhf-operator in {node_workloads.OPERATOR_NAMESPACE}")


def up(*, kuberay: bool = False, started_by: str = "cli", with_node: bool = False) -> dict:
    """Start the control plane unless it is up; return its state (server URL, ports, ...).
    with_node: also a real node (e2e/node.py) and, with it, the KubeRay operator."""
    started = time.monotonic()
    kuberay = kuberay or with_node
    with _locked():
        if _components_alive() and with_node and not read_state().get("node"):
            raise RuntimeError(
                "the control plane runs without a node: `cluster.py down` first, then `up --node`"
            )
        if _components_alive():
            # Never restart live components: another session may be using them.
            if not is_up(wait=90):
                raise RuntimeError(
                    f"the control plane runs but is not ready after 90s; see {LOG_DIR} (`cluster.py down` resets it)"
                )
            state = read_state()
            if kuberay and not _alive("kuberay-operator"):
                _start_kuberay(state)
            if with_node:  # images rebuilt since (a source change): import them, roll the operator
                _install_workloads(node_images.prepare_node(BIN_DIR, log=log))
            log(f"already up at {state['server']} ({time.monotonic() - started:.1f}s)")
            return state
        _stop_all()  # leftovers of a crashed or half-started run
        cluster_build.link_binaries(cluster_build.ensure_built(cluster_build.KUBE, log=log), BIN_DIR)
        archives: dict[str, Path] = {}
        if with_node:
            node.check_free(REPO)
            archives = node_images.prepare_node(BIN_DIR, log=log)
        crds = cluster_build.kuberay_crds_dir(log=log)
        if KUBERAY_CRDS.is_symlink() or KUBERAY_CRDS.exists():
            KUBERAY_CRDS.unlink()
        KUBERAY_CRDS.symlink_to(crds)
        t_binaries = time.monotonic() - started
        try:
            if with_node:
                node.network_up(REPO)  # the drop rules before anything that could start a pod
            state = _start_components(started_by, with_node)
            STATE_FILE.write_text(json.dumps(state, indent=2))
            if with_node:
                _start_node(state, archives)
            if kuberay:
                _start_kuberay(state)
            if with_node:
                _install_workloads(archives)
        except BaseException:
            _stop_all()
            raise
        log(f"up at {state['server']} in {time.monotonic() - started:.1f}s (binaries {t_binaries:.1f}s)")
        log(f"KUBECONFIG={KUBECONFIG}")
        return state


def _stop_all() -> None:
    _stop("kuberay-operator")
    if node.owned_by(REPO):
        _node().stop(kubectl if _alive("kube-apiserver") else None)
    for name in reversed(COMPONENTS):
        _stop(name)
    if node.owned_by(REPO):
        node.network_down()
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    for path in (STATE_FILE, KUBECONFIG):
        path.unlink(missing_ok=True)


def _down_unlocked() -> list[str]:
    running = [n for n in COMPONENTS if _alive(n)]
    running += [n for n in node.COMPONENTS if node.owned_by(REPO) and _node().procs.alive(n)]
    _stop_all()
    shutil.rmtree(LEASE_DIR, ignore_errors=True)
    return running


def down() -> None:
    with _locked():
        running = _down_unlocked()
    log(f"stopped {', '.join(running) or 'nothing'}; state removed (logs kept in {LOG_DIR})")


def add_lease(holder: int) -> None:
    """Record a user (a pytest session's pid) of the cluster, so another session won't stop it."""
    with _locked():
        LEASE_DIR.mkdir(parents=True, exist_ok=True)
        (LEASE_DIR / str(holder)).touch()


def leave(holder: int) -> None:
    """Drop holder's lease; stop the cluster if a pytest session started it and no live user is left.
    A cluster from `make cluster-up` (started_by "cli") keeps running."""
    with _locked():
        (LEASE_DIR / str(holder)).unlink(missing_ok=True)
        live = [
            lease
            for lease in (LEASE_DIR.glob("*") if LEASE_DIR.is_dir() else [])
            if lease.name.isdigit() and Path(f"/proc/{lease.name}").exists()
        ]
        if not live and read_state().get("started_by") == "pytest":
            _down_unlocked()
            log("stopped (last pytest session using it left)")


def env_lines() -> str:
    return f"export KUBECONFIG={KUBECONFIG}\nexport PATH={BIN_DIR}:$PATH\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build_p = sub.add_parser("build", help="build and cache the binaries")
    build_p.add_argument("--no-kuberay", action="store_true", help="skip the KubeRay operator binary")
    up_p = sub.add_parser("up", help="start the control plane (idempotent)")
    up_p.add_argument(
        "--node",
        action="store_true",
        default=os.environ.get("RLHF_E2E_NODE") == "1",
        help="also a real node (containerd, kubelet, CNI, CoreDNS; needs root) and the KubeRay operator",
    )
    up_p.add_argument(
        "--kuberay",
        action="store_true",
        default=os.environ.get("RLHF_E2E_KUBERAY") == "1",
        help="also run the KubeRay operator (logs in .cache/e2e/logs/)",
    )
    sub.add_parser("images", help="build the node's images (operator, trainer-cpu) on a debootstrap base")
    sub.add_parser(
        "prebuild",
        help="build everything the node needs (Debian packages, Go binaries, images), start nothing",
    )
    sub.add_parser("down", help="stop everything `up` started and remove its state")
    sub.add_parser("status", help="exit 0 when the control plane is up")
    sub.add_parser("env", help="print shell exports (KUBECONFIG, PATH)")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            cluster_build.build_all(BIN_DIR, kuberay=not args.no_kuberay, log=log)
        elif args.command == "up":
            up(kuberay=args.kuberay, with_node=args.node)
        elif args.command == "images":
            for name, archive in node_images.build_all(log=log).items():
                print(f"{name}\t{archive}")
        elif args.command == "prebuild":
            node_images.prepare_node(BIN_DIR, log=log)
        elif args.command == "down":
            down()
        elif args.command == "status":
            running = is_up()
            print(f"up at {read_state()['server']}" if running else "down")
            return 0 if running else 1
        else:
            sys.stdout.write(env_lines())
    except RuntimeError as err:
        print(f"cluster.py {args.command}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
