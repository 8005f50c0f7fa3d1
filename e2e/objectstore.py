"""A real S3-compatible object store on loopback for the checkpoint tests: versitygw (the Versity S3
gateway) with its posix backend, built from its Go module at the version pinned in
e2e/gomod/objectstore/go.mod and cached like the control-plane binaries (cluster_build.ensure_built:
~/.cache/rlhf-operator-e2e/objectstore-<version>-<hash>/bin/versitygw).

Objects are plain files under the data directory (a bucket is a directory), so a test can see what
was uploaded, and the server speaks the S3 API that boto3 uses against AWS or MinIO.

    python e2e/objectstore.py build      # build (or find) the binary; prints its path
    python e2e/objectstore.py serve DIR  # serve DIR on a free loopback port until Ctrl-C
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_build import GoModule, ensure_built  # noqa: E402

VERSITYGW_MODULE = "github.com/versity/versitygw"
OBJECTSTORE = GoModule(
    name="objectstore",
    main_module=VERSITYGW_MODULE,
    packages=(f"{VERSITYGW_MODULE}/cmd/versitygw",),
)
REGION = "us-east-1"


def ensure_objectstore(*, log: Any = print) -> Path:
    """The versitygw binary, built on first use (about 3 minutes cold on 2 cores)."""
    return ensure_built(OBJECTSTORE, log=log) / "bin" / "versitygw"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ObjectStoreServer:
    endpoint: str
    access_key: str
    secret_key: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def env(self) -> dict[str, str]:
        """What the trainer's pods get from the job's Secret."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_objectstore(workdir: Path, *, log: Any = print, timeout_s: float = 30.0) -> ObjectStoreServer:
    """Serve workdir/data on a free loopback port with fresh root credentials."""
    binary = ensure_objectstore(log=log)
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    access_key, secret_key = f"rlhf{secrets.token_hex(4)}", secrets.token_hex(16)
    log_path = workdir / "versitygw.log"
    env = {**os.environ, "ROOT_ACCESS_KEY_ID": access_key, "ROOT_SECRET_ACCESS_KEY": secret_key}
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [
                str(binary),
                "--port",
                f"127.0.0.1:{port}",
                "--region",
                REGION,
                "--quiet",
                "posix",
                str(data_dir),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = ObjectStoreServer(
        f"http://127.0.0.1:{port}", access_key, secret_key, data_dir, process, log_path
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"versitygw exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            server.client().list_buckets()
            return server
        except Exception:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"versitygw did not answer on {server.endpoint} within {timeout_s}s; log: {log_path}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["build"]:
        print(ensure_objectstore())
        return 0
    if argv[:1] == ["serve"] and len(argv) == 2:
        server = start_objectstore(Path(argv[1]).resolve())
        print(f"endpoint {server.endpoint}\naccess key {server.access_key}\nsecret key {server.secret_key}")
        try:
            server.process.wait()
        except KeyboardInterrupt:
            server.stop()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
