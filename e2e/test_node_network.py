"""The node's network from inside a pod: the API server (through the `kubernetes` Service) and the
cluster DNS work; a name outside the cluster does not resolve (CoreDNS has no forward plugin) and
the machine's own non-bridge address is unreachable (the drop rules). No address outside this
machine is ever dialled here."""

from __future__ import annotations

import json
import subprocess

import pytest
from e2e_kube import eventually
from node_net import BRIDGE, DROP_RULES, rule_args
from node_workloads import NodeCluster

pytestmark = pytest.mark.timeout(300)

PROBE = """
import json, socket, sys
def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "open"
    except OSError as err:
        return type(err).__name__
def name(host):
    try:
        return socket.gethostbyname(host)
    except OSError as err:
        return type(err).__name__
print(json.dumps({
    "api": tcp("kubernetes.default.svc.cluster.local", 443),
    "dns": name("kube-dns.kube-system.svc.cluster.local"),
    "outside_name": name("pypi.org"),
    "host": tcp(sys.argv[1], int(sys.argv[2])),
}))
"""


def host_address() -> str:
    """An address of this machine that is not on the node's bridge (nor loopback)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        words = line.split()
        if words[1] not in ("lo", BRIDGE):
            return words[3].split("/")[0]
    pytest.skip("this machine has no IPv4 address besides loopback and the bridge")


def test_the_drop_rules_are_in_place(node_cluster: NodeCluster) -> None:
    """With the node up (the fixture: it is a node test, run in the node's session)."""
    for rule in DROP_RULES:
        tool, table, chain, args = rule_args(rule)
        assert subprocess.run([tool, "-t", table, "-C", chain, *args], capture_output=True).returncode == 0, (
            rule
        )


def test_a_pod_reaches_the_api_server_and_cluster_dns_and_nothing_else(
    node_cluster: NodeCluster, node_namespace: str
) -> None:
    kubectl = node_cluster.kubectl
    # Any port of the machine's own address: a dropped SYN times out, a reachable port answers
    # (open or refused), so the answer tells whether the rule holds.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "probe",
                    "image": node_cluster.images["operator"],
                    "command": ["python3", "-c", PROBE, host_address(), "22"],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }
    kubectl.apply(pod, namespace=node_namespace)

    def finished() -> str | None:
        phase = kubectl.json("get", "pod", "probe", namespace=node_namespace)["status"].get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    assert eventually(finished, 120, "the probe pod to finish") == "Succeeded"
    result = json.loads(kubectl("logs", "probe", namespace=node_namespace).stdout)
    assert result["api"] == "open", result
    assert result["dns"] == "10.0.0.10", result
    assert result["outside_name"] == "gaierror", result
    assert result["host"] == "TimeoutError", result  # dropped, not refused
