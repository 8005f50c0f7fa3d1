"""Certificates and keys for the e2e control plane, made with the openssl CLI.

(The `cryptography` package is not guaranteed to be installed; openssl is.) EC P-256 keys: fast to
generate and accepted by every Kubernetes component.

- ca.crt/ca.key             signs everything below; also the kube-apiserver's --client-ca-file
- apiserver.crt/.key        serving cert for 127.0.0.1 / localhost / kubernetes.default.svc
- admin.crt/.key            client cert in group system:masters (the admin kubeconfig)
- controller-manager.crt    client cert for user system:kube-controller-manager (bound by default RBAC)
- sa.key/sa.pub             service-account token signing key pair
"""

from __future__ import annotations

import subprocess
from pathlib import Path

CA_DAYS = "3650"
APISERVER_SANS = (
    "IP:127.0.0.1",
    "DNS:localhost",
    "IP:10.244.0.1",  # the node's bridge: the API server's address when a node runs (e2e/node.py)
    "IP:10.0.0.1",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}")


def _ec_key(name: str, cwd: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name, cwd=cwd)


def _signed_cert(name: str, subject: str, extensions: str, cwd: Path) -> None:
    _ec_key(f"{name}.key", cwd)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=cwd)
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        CA_DAYS,
        "-sha256",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.crt",
        cwd=cwd,
    )
    (cwd / f"{name}.csr").unlink()
    (cwd / f"{name}.ext").unlink()


def _client_cert(name: str, subject: str, cwd: Path) -> None:
    _signed_cert(
        name,
        subject,
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        cwd,
    )


client_cert = _client_cert  # e2e/node.py: the node components' identities


def generate(pki_dir: Path) -> None:
    """Write a fresh PKI into pki_dir (idempotent: an existing complete set is kept)."""
    if (pki_dir / "sa.pub").exists():
        return
    pki_dir.mkdir(parents=True, exist_ok=True)
    _ec_key("ca.key", pki_dir)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=rlhf-e2e-ca",
        "-days",
        CA_DAYS,
        "-sha256",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        "-out",
        "ca.crt",
        cwd=pki_dir,
    )
    _signed_cert(
        "apiserver",
        "/CN=kube-apiserver",
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(APISERVER_SANS)}\n",
        pki_dir,
    )
    _client_cert("admin", "/O=system:masters/CN=rlhf-e2e-admin", pki_dir)
    _client_cert("controller-manager", "/CN=system:kube-controller-manager", pki_dir)
    _ec_key("sa.key", pki_dir)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki_dir)
