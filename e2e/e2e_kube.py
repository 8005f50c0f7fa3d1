"""Clients for the e2e control plane: the built kubectl bound to a kubeconfig, and what the
control_plane fixture hands out. Importable from any e2e test: `from e2e_kube import Kubectl`."""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class KubectlError(RuntimeError):
    def __init__(self, args: list[str], proc: subprocess.CompletedProcess):
        super().__init__(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr


@dataclass(frozen=True)
class Kubectl:
    """The built kubectl bound to one kubeconfig."""

    binary: Path
    kubeconfig: Path

    def __call__(
        self,
        *args: str,
        namespace: str | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess:
        argv = [
            f"--kubeconfig={self.kubeconfig}",
            *([f"--namespace={namespace}"] if namespace else []),
            *args,
        ]
        proc = subprocess.run(
            [str(self.binary), *argv], input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise KubectlError(argv, proc)
        return proc

    def json(self, *args: str, namespace: str | None = None) -> Any:
        return json.loads(self(*args, "-o", "json", namespace=namespace).stdout)

    def apply(
        self,
        manifest: str | dict | Path,
        *,
        namespace: str | None = None,
        server_side: bool = False,
        dry_run: bool = False,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        if isinstance(manifest, Path):
            manifest = manifest.read_text()
        if isinstance(manifest, dict):
            manifest = yaml.safe_dump(manifest)
        flags = (["--server-side", "--field-manager=e2e"] if server_side else []) + (
            ["--dry-run=server"] if dry_run else []
        )
        return self("apply", *flags, "-f", "-", namespace=namespace, input=manifest, check=check)

    def create_namespace(self, base: str) -> str:
        """A new namespace e2e-<base>-<random>, labelled rlhf.io/e2e=true; returns its name."""
        slug = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")[:40].strip("-")
        name = f"e2e-{slug}-{secrets.token_hex(3)}"
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {"rlhf.io/e2e": "true"}},
            }
        )
        # Pods are admitted only once the controller-manager has made the namespace's default
        # ServiceAccount (seconds later on a loaded machine): wait for it, as for a ready namespace.
        eventually(
            lambda: (
                self("get", "serviceaccount", "default", "-o", "name", namespace=name, check=False).returncode
                == 0
            ),
            60,
            f"namespace {name}'s default ServiceAccount",
        )
        return name

    def delete_namespace(self, name: str) -> None:
        """Start deleting (the namespace controller finishes it); does not wait."""
        self("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@dataclass(frozen=True)
class ControlPlane:
    kubeconfig: Path
    server: str
    bin_dir: Path
    log_dir: Path
    ca_file: Path
    env: dict[str, str] = field(repr=False)

    def bin(self, name: str) -> Path:
        path = self.bin_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{path}: not built (see e2e/cluster.py build)")
        return path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def eventually(probe: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """The first truthy value of probe(), or fail after `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
