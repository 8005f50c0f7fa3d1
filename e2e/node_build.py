"""What the node needs besides the control plane: Debian packages (containerd, runc, the CNI
plugins, iptables, debootstrap, buildah) and Go binaries built from pinned wrapper modules like
the control plane's (cluster_build.py): kubelet, kube-proxy and kube-scheduler (gomod/kubenode,
the same Kubernetes pin), a slim CoreDNS (gomod/coredns: no forward plugin is linked) and the pod
sandbox binary (gomod/pause). All cached under ~/.cache/rlhf-operator-e2e/ by pin.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import cluster_build
from cluster_build import GoModule

COREDNS = GoModule(name="coredns", main_module="github.com/coredns/coredns", packages=(".",))
PAUSE = GoModule(name="pause", main_module="", packages=(".",))
NODE_MODULES = (cluster_build.KUBENODE, COREDNS, PAUSE)

# Debian package -> a command it installs (present: nothing to do).
DEBIAN_PACKAGES = {
    "containerd": "/usr/bin/containerd",
    "runc": "/usr/sbin/runc",
    "containernetworking-plugins": "/usr/lib/cni/bridge",
    "iptables": "/usr/sbin/iptables",
    "conntrack": "/usr/sbin/conntrack",
    "socat": "/usr/bin/socat",
    "debootstrap": "/usr/sbin/debootstrap",
    "buildah": "/usr/bin/buildah",
}


def ensure_debian_packages(*, log=print) -> None:
    """apt-get install what is missing (root, as the node itself needs)."""
    missing = [pkg for pkg, path in DEBIAN_PACKAGES.items() if not Path(path).exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"the node needs root to install Debian packages: {' '.join(missing)}")
    log(f"apt-get install {' '.join(missing)} ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=env
    )


def build_node(bin_dir: Path, *, log=print) -> None:
    """Install the packages, build (or find cached) the node's binaries and link them into bin_dir."""
    ensure_debian_packages(log=log)
    for module in NODE_MODULES:
        cluster_build.link_binaries(cluster_build.ensure_built(module, log=log), bin_dir)
