"""A real node for the e2e control plane: containerd + runc (Debian), CNI bridge networking on a
private pod range, kubelet, kube-scheduler, kube-proxy and a CoreDNS that does not forward.

The node is machine-wide (fixed paths under /var/lib and /run, port 10250, iptables, a bridge,
cgroups), so one runs at a time; `cluster.py up --node` starts it after the control plane and
`cluster.py down` removes everything they added: pods through the kubelet first, then the
processes by pid, leftover containers and shims, mounts, cgroups and paths (`Node.stop`), then
the network (node_net.network_down).

Network safety (node_net.py): the bridge, the drop rules (pods reach only the pod range and the
node's bridge address) and the sysctls are in place before containerd starts, so before any pod.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import cluster_build
import cluster_pki
from cluster_procs import ComponentProcesses
from node_net import (  # noqa: F401 - re-exported: cluster.py uses node.NODE_IP, node.network_up, ...
    BRIDGE,
    DNS_IP,
    NODE_IP,
    POD_CIDR,
    ROOT,
    RUN,
    SERVICE_CIDR,
    check_free,
    network_down,
    network_up,
    owned_by,
    run,
)

NODE_NAME = "rlhf-e2e-node"
KUBELET_PORT = 10250
SOCKET = RUN / "containerd.sock"
# containerd's content and snapshots live in the build cache, not under ROOT: the imported images
# (GiBs) survive `down`, so the next `up` needs no import. Nothing runs from there after `down`.
CONTAINERD_ROOT = cluster_build.CACHE_ROOT / "containerd"
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Start order; stop in reverse.
COMPONENTS = ("containerd", "kubelet", "kube-proxy", "coredns", "kube-scheduler")
SANDBOX_IMAGE = "localhost/rlhf-e2e/pause:1"


def _run(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return run(*cmd, check=check, input=input)


class Node:
    """The node's processes; `server` and `pki` are the control plane's (cluster.py)."""

    def __init__(self, bin_dir: Path, log_dir: Path, pki: Path, kubeconfig_text: Callable[..., str]):
        self.bin_dir, self.log_dir, self.pki = bin_dir, log_dir, pki
        self.kubeconfig_text = kubeconfig_text
        self.procs = ComponentProcesses(bin_dir, log_dir, RUN / "pids", binaries={})
        self.conf = RUN / "conf"

    def alive(self) -> bool:
        return all(self.procs.alive(name) for name in COMPONENTS)

    # -- configuration -------------------------------------------------------------------------

    def _identities(self, server: str) -> None:
        for name, subject in (
            ("node", f"/O=system:nodes/CN=system:node:{NODE_NAME}"),
            ("scheduler", "/CN=system:kube-scheduler"),
            ("proxy", "/CN=system:kube-proxy"),
            ("coredns", "/CN=rlhf-e2e:coredns"),
        ):
            if not (self.pki / f"{name}.crt").exists():
                cluster_pki.client_cert(name, subject, self.pki)
            text = self.kubeconfig_text(server, name, f"{name}.crt", f"{name}.key")
            (self.conf / f"{name}.kubeconfig").write_text(text)

    def _containerd_config(self) -> Path:
        path = self.conf / "containerd.toml"
        cni = ROOT / "cni"
        path.write_text(
            f"""version = 2
root = "{CONTAINERD_ROOT}"
state = "{RUN / "containerd"}"
[grpc]
  address = "{SOCKET}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{ROOT / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni / "net.d"}"
"""
        )
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        network = {
            "cniVersion": "0.4.0",
            "name": "rlhf-e2e",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,  # nothing leaves the pod range: no NAT rules needed
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(cni / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": False},
            ],
        }
        (cni / "net.d" / "10-rlhf-e2e.conflist").write_text(json.dumps(network, indent=2))
        return path

    def _kubelet_config(self) -> Path:
        path = self.conf / "kubelet.yaml"
        resolv = self.conf / "resolv.conf"
        resolv.write_text("")  # no upstream resolver for pods: cluster DNS only
        path.write_text(
            f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://{SOCKET}
address: {NODE_IP}
port: {KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
podLogsDir: {ROOT / "pod-logs"}
clusterDNS: [{DNS_IP}]
clusterDomain: cluster.local
resolvConf: {resolv}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {self.pki / "ca.crt"}}}
authorization: {{mode: AlwaysAllow}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}}
serializeImagePulls: false
"""
        )
        return path

    def _proxy_config(self, ports: dict[str, int]) -> Path:
        path = self.conf / "kube-proxy.yaml"
        path.write_text(
            f"""apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: {POD_CIDR}
bindAddress: {NODE_IP}
healthzBindAddress: 127.0.0.1:{ports["proxy_healthz"]}
metricsBindAddress: 127.0.0.1:{ports["proxy_metrics"]}
nodePortAddresses: ["{NODE_IP}/32"]
clientConnection: {{kubeconfig: {self.conf / "proxy.kubeconfig"}}}
iptables: {{localhostNodePorts: false}}
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
"""
        )
        return path

    def _corefile(self, ports: dict[str, int]) -> Path:
        path = self.conf / "Corefile"
        path.write_text(
            f""".:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{ports["dns_health"]}
    ready 127.0.0.1:{ports["dns_ready"]}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {self.conf / "coredns.kubeconfig"}
        pods insecure
    }}
    cache 30
    loadbalance
}}
"""
        )
        return path

    # -- start / stop --------------------------------------------------------------------------

    def start_runtime(self, server: str) -> None:
        """containerd (with the node's identities and configs written first)."""
        for sub in (self.conf, RUN / "pids", ROOT):
            sub.mkdir(parents=True, exist_ok=True)
        self._identities(server)
        link = self.bin_dir / "containerd"
        if not link.is_symlink():
            link.symlink_to("/usr/bin/containerd")
        self.procs.start("containerd", ["--config", str(self._containerd_config())])
        self.procs.wait("containerd", lambda: _run(*ctr_command("version"), check=False).returncode == 0, 60)

    def start_kube(self, kubectl: Callable[..., subprocess.CompletedProcess], free_port) -> None:
        """kubelet (node Ready) -> kube-proxy -> CoreDNS (+ its Service) -> kube-scheduler."""
        procs = self.procs
        ports = {
            n: free_port() for n in ("proxy_healthz", "proxy_metrics", "dns_health", "dns_ready", "sched")
        }
        procs.start(
            "kubelet",
            [
                f"--config={self._kubelet_config()}",
                f"--kubeconfig={self.conf / 'node.kubeconfig'}",
                f"--root-dir={ROOT / 'kubelet'}",
                f"--cert-dir={ROOT / 'kubelet' / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )

        def node_ready() -> bool:
            out = kubectl(
                "get",
                "node",
                NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                check=False,
            )
            return out.stdout.strip() == "True"

        procs.wait("kubelet", node_ready, 120)
        procs.start(
            "kube-proxy", [f"--config={self._proxy_config(ports)}", f"--hostname-override={NODE_NAME}"]
        )
        kubectl("apply", "--server-side", "--field-manager=rlhf-e2e", "-f", "-", input=_dns_objects())
        procs.start("coredns", ["-conf", str(self._corefile(ports))])
        procs.wait("coredns", lambda: _http_ok(f"http://127.0.0.1:{ports['dns_ready']}/ready"), 60)
        scheduler = self.conf / "scheduler.kubeconfig"
        procs.start(
            "kube-scheduler",
            [
                f"--kubeconfig={scheduler}",
                f"--authentication-kubeconfig={scheduler}",
                f"--authorization-kubeconfig={scheduler}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['sched']}",
            ],
        )
        procs.wait("kube-proxy", lambda: _http_ok(f"http://127.0.0.1:{ports['proxy_healthz']}/healthz"), 60)

    def stop(self, kubectl: Callable[..., subprocess.CompletedProcess] | None) -> None:
        """Pods first (through the kubelet, which tears their sandboxes and networks down), then the
        processes; whatever is left (containers, shims, mounts, cgroups, paths) is removed by hand."""
        self.procs.stop("kube-scheduler")
        if kubectl is not None and self.procs.alive("kubelet") and self.procs.alive("containerd"):
            kubectl(
                "delete",
                "pods",
                "--all",
                "--all-namespaces",
                "--grace-period=0",
                "--force",
                "--wait=false",
                check=False,
            )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and _sandboxes():
                time.sleep(1)
        for name in ("kube-proxy", "coredns", "kubelet"):
            self.procs.stop(name)
        if (self.bin_dir / "kube-proxy").exists():  # its iptables chains (network_down checks too)
            _run(str(self.bin_dir / "kube-proxy"), "--cleanup", check=False)
        self.procs.stop("containerd")
        _kill_leftovers()
        _unmount_under((ROOT, RUN / "containerd", CONTAINERD_ROOT))
        _remove_cgroups()
        _run("rm", "-rf", str(ROOT), str(RUN / "containerd"), str(self.conf))


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200


def ctr_command(*args: str) -> list[str]:
    """`ctr` against the node's containerd, in the CRI's namespace."""
    return ["ctr", "--address", str(SOCKET), "--namespace", "k8s.io", *args]


def _sandboxes() -> list[str]:
    out = _run(*ctr_command("tasks", "ls", "-q"), check=False)
    return out.stdout.split() if out.returncode == 0 else []


def _dns_objects() -> str:
    """The cluster DNS Service (DNS_IP) and its endpoints: CoreDNS on the node's bridge address;
    CoreDNS's own read access to Services, EndpointSlices and Namespaces."""
    return f"""apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  clusterIP: {DNS_IP}
  ports:
  - {{name: dns, port: 53, protocol: UDP, targetPort: 53}}
  - {{name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-node
  namespace: kube-system
  labels: {{kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: rlhf-e2e}}
addressType: IPv4
endpoints:
- addresses: ["{NODE_IP}"]
  conditions: {{ready: true}}
ports:
- {{name: dns, port: 53, protocol: UDP}}
- {{name: dns-tcp, port: 53, protocol: TCP}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: "rlhf-e2e:coredns"}}
rules:
- {{apiGroups: [""], resources: [services, namespaces, pods, endpoints], verbs: [list, watch]}}
- {{apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "rlhf-e2e:coredns"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "rlhf-e2e:coredns"}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: "rlhf-e2e:coredns"}}]
"""


def _pids_in_cgroups() -> list[int]:
    pids: set[int] = set()
    for procs in CGROUP_ROOT.glob("*/kubepods/**/cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(p) for p in procs.read_text().split())
    return sorted(pids)


def _kill_leftovers() -> None:
    """Containers still running (in the kubepods cgroups) and our containerd's shims, by pid."""
    for pid in _pids_in_cgroups():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if (
                Path(cmdline[0].decode()).name == "containerd-shim-runc-v2"
                and str(SOCKET).encode() in cmdline
            ):
                os.kill(int(proc.name), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _pids_in_cgroups() and time.monotonic() < deadline:
        time.sleep(0.2)


def _unmount_under(roots: tuple[Path, ...]) -> None:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == str(r) or point.startswith(f"{r}/") for r in roots):
            points.append(point)
    for point in sorted(points, key=len, reverse=True):
        if _run("umount", point, check=False).returncode != 0:
            _run("umount", "-l", point, check=False)


def _remove_cgroups() -> None:
    for top in CGROUP_ROOT.glob("*/kubepods"):
        for cgroup in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                cgroup.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()
