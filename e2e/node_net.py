"""The node's network and its records: the bridge with the pod range, the drop rules, the
sysctls, and what `network_up` added (RUN/state.json, written before anything is added), so that
`network_down` removes exactly that: rules carrying MARK, iptables chains that were not there
before (kubelet's and kube-proxy's), the bridge, the pods' leftover network namespaces, kubelet's
log links, and the sysctls' old values.

Pods reach the pod range (forwarded) and the node's bridge address (the API server, CoreDNS,
kubelet) and nothing else; IPv6 from the bridge goes nowhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

BRIDGE = "rlhf0"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"  # the bridge's address: the API server, kubelet and CoreDNS listen here
SERVICE_CIDR = "10.0.0.0/24"
DNS_IP = "10.0.0.10"
ROOT = Path(os.environ.get("RLHF_E2E_NODE_ROOT", "/var/lib/rlhf-e2e-node"))
RUN = Path("/run/rlhf-e2e-node")
STATE = RUN / "state.json"
NETNS_DIR = Path("/run/netns")  # containerd 1.6 puts the pods' network namespaces here
CONTAINER_LOG_LINKS = Path("/var/log/containers")  # kubelet's fixed symlink directory
# Fixed paths the node's programs create whatever they are told: kubelet's device-plugin directory
# and libcni's result cache. Removed by `network_down` when they did not exist before.
FIXED_PATHS = (Path("/var/lib/kubelet"), Path("/var/lib/cni"))
MARK = "rlhf-e2e-node"  # the comment on every iptables rule set-up adds
TABLES = ("filter", "nat", "mangle", "raw")


def run(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc


def read_state() -> dict:
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        return {}


def _write_state(state: dict) -> None:
    RUN.mkdir(parents=True, exist_ok=True)
    STATE.write_text(json.dumps(state, indent=2))


def _sysctl(name: str, value: str | None = None) -> str:
    path = Path("/proc/sys") / name.replace(".", "/")
    old = path.read_text().strip()
    if value is not None:
        path.write_text(value)
    return old


def _chains(tool: str) -> dict[str, list[str]]:
    chains: dict[str, list[str]] = {}
    for table in TABLES:
        out = run(f"{tool}-save", "-t", table, check=False).stdout
        chains[table] = [line[1:].split()[0] for line in out.splitlines() if line.startswith(":")]
    return chains


# The drop rules: from the bridge, only the pod range (forwarded) and the node's bridge address
# (to the host) are reachable; IPv6 from the bridge goes nowhere.
DROP_RULES = (
    ("iptables", "mangle", "FORWARD", "-i", BRIDGE, "!", "-d", POD_CIDR),
    ("iptables", "mangle", "FORWARD", "-s", POD_CIDR, "!", "-d", POD_CIDR),
    ("iptables", "mangle", "INPUT", "-i", BRIDGE, "!", "-d", NODE_IP),
    ("ip6tables", "mangle", "FORWARD", "-i", BRIDGE),
    ("ip6tables", "mangle", "INPUT", "-i", BRIDGE),
)


def rule_args(rule: tuple[str, ...]) -> tuple[str, str, str, list[str]]:
    tool, table, chain, *match = rule
    return tool, table, chain, [*match, "-m", "comment", "--comment", MARK, "-j", "DROP"]


def owned_by(repo: Path) -> bool:
    """True when the node's recorded state (if any) belongs to the checkout at repo."""
    return read_state().get("repo") == str(repo)


def check_free(repo: Path) -> None:
    """The node is machine-wide: refuse to start a second one for another checkout."""
    owner = read_state().get("repo")
    if owner is not None and owner != str(repo):
        raise RuntimeError(f"a node of {owner} is up on this machine: `cluster.py down` there first")
    if os.geteuid() != 0:
        raise RuntimeError("a node needs root (containerd, kubelet, iptables, a bridge)")


def network_up(repo: Path) -> None:
    """Bridge, drop rules and sysctls, recorded first so that `network_down` can undo a half-done up."""
    state = read_state()
    if "network" not in state:
        state["repo"] = str(repo)
        state["network"] = {
            "chains": {tool: _chains(tool) for tool in ("iptables", "ip6tables")},
            "ip_forward": _sysctl("net.ipv4.ip_forward"),
            "bridge_nf": _sysctl("net.bridge.bridge-nf-call-iptables"),
            "netns": sorted(p.name for p in NETNS_DIR.glob("*")) if NETNS_DIR.is_dir() else None,
            "log_links_existed": CONTAINER_LOG_LINKS.is_dir(),
            "fixed_paths_existed": {str(path): path.exists() for path in FIXED_PATHS},
        }
        _write_state(state)
    if run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        run("ip", "link", "add", BRIDGE, "type", "bridge")
    if NODE_IP not in run("ip", "-4", "addr", "show", BRIDGE).stdout:
        run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    for rule in DROP_RULES:
        tool, table, chain, args = rule_args(rule)
        if run(tool, "-t", table, "-C", chain, *args, check=False).returncode != 0:
            run(tool, "-t", table, "-I", chain, "1", *args)
    _sysctl("net.bridge.bridge-nf-call-iptables", "1")  # kube-proxy's DNAT for pod-to-pod on the bridge
    _sysctl("net.ipv4.ip_forward", "1")


def _remove_added_iptables(before: dict[str, dict[str, list[str]]]) -> None:
    """Delete every rule carrying MARK, every chain not there before (kubelet's and kube-proxy's),
    and the rules in older chains that jump to them."""
    for tool in ("iptables", "ip6tables"):
        for table in TABLES:
            out = run(f"{tool}-save", "-t", table, check=False).stdout
            lines = out.splitlines()
            old = set(before.get(tool, {}).get(table, []))
            added = [line[1:].split()[0] for line in lines if line.startswith(":")]
            added = [c for c in added if c not in old]
            for line in lines:
                if not line.startswith("-A "):
                    continue
                words = line.split()
                chain = words[1]
                target = words[words.index("-j") + 1] if "-j" in words else ""
                if chain in added:
                    continue
                if MARK in line or target in added:
                    # iptables-save quotes comments; -D takes the same words unquoted.
                    args = [w.strip('"') for w in words[2:]]
                    run(tool, "-t", table, "-D", chain, *args, check=False)
            for chain in added:
                run(tool, "-t", table, "-F", chain, check=False)
            for chain in added:
                run(tool, "-t", table, "-X", chain, check=False)


def network_down() -> None:
    state = read_state().get("network")
    if state is None:
        return
    _remove_added_iptables(state["chains"])
    run("ip", "link", "del", BRIDGE, check=False)
    _sysctl("net.ipv4.ip_forward", state["ip_forward"])
    _sysctl("net.bridge.bridge-nf-call-iptables", state["bridge_nf"])
    for name in sorted(p.name for p in NETNS_DIR.glob("*")) if NETNS_DIR.is_dir() else []:
        if name not in (state["netns"] or []):
            run("umount", str(NETNS_DIR / name), check=False)
            (NETNS_DIR / name).unlink(missing_ok=True)
    if state["netns"] is None and NETNS_DIR.is_dir():
        with contextlib.suppress(OSError):
            NETNS_DIR.rmdir()  # containerd made it
    if not state["log_links_existed"]:
        run("rm", "-rf", str(CONTAINER_LOG_LINKS))
    else:  # only kubelet's links to our pods' logs
        for link in CONTAINER_LOG_LINKS.glob("*.log"):
            if link.is_symlink() and str(os.readlink(link)).startswith(str(ROOT)):
                link.unlink()
    for path, existed in state.get("fixed_paths_existed", {}).items():
        if not existed:
            run("rm", "-rf", path)
    for result in Path("/var/lib/cni/results").glob("rlhf-e2e-*"):  # our network's, when it existed
        result.unlink()
    run("rm", "-rf", str(RUN))
