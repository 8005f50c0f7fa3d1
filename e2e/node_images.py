"""The node's images, built without a registry or a Docker daemon and imported into its containerd.

- base:        a Debian rootfs from debootstrap (python3, pip, venv, wget), standing in for
               python:3.11-slim-bookworm, which cannot be pulled here.
- operator:    images/operator/Dockerfile, FROM that base (build argument PYTHON_IMAGE).
- trainer-cpu: images/trainer/Dockerfile.cpu, FROM that base.
- pause:       the pods' sandbox (gomod/pause), one static binary in an otherwise empty image.

Builds use Debian's buildah (`buildah bud`, no daemon; `--network host` for pip in RUN steps) with
its storage under ~/.cache/rlhf-operator-e2e/buildah, so its layer cache makes a source change
rebuild only the last layers. Each image is kept as an OCI archive named by a hash of its inputs
(the Dockerfile, its build-context files as the .dockerignore selects them, the base); an
unchanged hash is not rebuilt, and containerd imports an archive only when it lacks that image.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cluster_build
import node
import node_build

REPO = Path(__file__).resolve().parent.parent
CACHE = cluster_build.CACHE_ROOT
ARCHIVES = CACHE / "images"
BUILDAH_ROOT = CACHE / "buildah"
BUILDAH_RUNROOT = Path("/run/rlhf-e2e-buildah")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-pip", "python3-venv", "wget", "ca-certificates")
REGISTRY = "localhost/rlhf-operator"  # never pulled: IfNotPresent finds the imported image
HOST_TRUST = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf")
DOCKERFILES = {
    "operator": REPO / "images" / "operator" / "Dockerfile",
    "trainer-cpu": REPO / "images" / "trainer" / "Dockerfile.cpu",
}


def version() -> str:
    for line in (REPO / "pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    raise RuntimeError("pyproject.toml has no version")


def image_name(target: str) -> str:
    """The name a chart value or a job's spec.image uses: localhost/rlhf-operator/<target>:<version>."""
    return f"{REGISTRY}/{target}:{version()}"


def buildah(*args: str, check: bool = True, log_file: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [
        "nice",
        "-n",
        "10",
        "buildah",
        "--root",
        str(BUILDAH_ROOT),
        "--runroot",
        str(BUILDAH_RUNROOT),
        "--storage-driver",
        "overlay",
        *args,
    ]
    if log_file is not None:
        with open(log_file, "a") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        if check and proc.returncode != 0:
            tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"buildah {args[0]} failed (exit {proc.returncode}); {log_file}:\n{tail}")
        return proc
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args[:3])} failed: {proc.stderr.strip()[-2000:]}")
    return proc


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:12]


def _has_image(name: str) -> bool:
    return buildah("images", "--quiet", name, check=False).returncode == 0


def base_image(*, log=print) -> str:
    """localhost/rlhf-e2e/base:bookworm-<hash>: debootstrap --variant=minbase plus BASE_PACKAGES,
    made to act like python:3.11-slim (pip may install system-wide, `python` names python3)."""
    name = f"localhost/rlhf-e2e/base:{SUITE}-{_digest(SUITE.encode(), ' '.join(BASE_PACKAGES).encode())}"
    if _has_image(name):
        return name
    started = time.monotonic()
    rootfs = CACHE / f".base-{os.getpid()}"
    shutil.rmtree(rootfs, ignore_errors=True)
    log(f"debootstrap {SUITE} (+ {', '.join(BASE_PACKAGES)}) ...")
    subprocess.run(
        ["nice", "-n", "10", "debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}"]
        + [SUITE, str(rootfs), MIRROR],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        (rootfs / "usr/bin/python").symlink_to("python3")
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        tarball = CACHE / f".base-{os.getpid()}.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
        container = buildah("from", "scratch").stdout.strip()
        buildah("add", container, str(tarball), "/")
        buildah(
            "config",
            "--env",
            "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "--cmd",
            "python3",
            container,
        )
        buildah("commit", "--rm", container, name)
        tarball.unlink()
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    log(f"base image {name} in {time.monotonic() - started:.0f}s")
    return name


def _context_files(dockerfile: Path) -> list[Path]:
    """The build-context files the Dockerfile's .dockerignore lets through (the patterns used here:
    `**`, `!dir/`, `!file`, `**/x` exclusions)."""
    ignore = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]
    files = []
    for path in sorted(REPO.rglob("*")):
        if not path.is_file() or ".git" in path.parts or ".cache" in path.parts:
            continue
        rel = path.relative_to(REPO).as_posix()
        keep = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern.lstrip("!").rstrip("/")
            match = (
                pat == "**"
                or fnmatch.fnmatch(rel, pat)
                or rel.startswith(f"{pat}/")
                or (pat.startswith("**/") and fnmatch.fnmatch(path.name, pat[3:]))
                or (pat.startswith("**/") and f"/{pat[3:]}/" in f"/{rel}")
            )
            if match:
                keep = negate
        if keep:
            files.append(path)
    return files


def build(target: str, base: str, *, log=print) -> Path:
    """The OCI archive of images/<target>, built from `base` unless one with the same inputs exists."""
    dockerfile = DOCKERFILES[target]
    parts = [dockerfile.read_bytes(), base.encode(), image_name(target).encode()]
    for path in _context_files(dockerfile):
        if path.name == "README.md":  # only the package's long description: not worth a rebuild
            continue
        parts += [path.relative_to(REPO).as_posix().encode(), path.read_bytes()]
    archive = ARCHIVES / f"{target}-{_digest(*parts)}.oci.tar"
    if archive.exists():
        return archive
    ARCHIVES.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    build_log = ARCHIVES / f"{target}.build.log"
    build_log.write_text("")
    log(f"building {image_name(target)} from {dockerfile.relative_to(REPO)} (log: {build_log}) ...")
    # The machine's CA bundle and pip configuration in the RUN steps only (not in the image): pip
    # inside the build then trusts what pip on this machine trusts (e.g. a TLS-inspecting proxy's CA).
    mounts = [f"--volume={f}:{f}:ro" for f in HOST_TRUST if Path(f).is_file()]
    buildah(
        "bud",
        *mounts,
        "--layers",
        "--network",
        "host",
        "--isolation",
        "chroot",
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "--ignorefile",
        f"{dockerfile}.dockerignore",
        "-f",
        str(dockerfile),
        "-t",
        image_name(target),
        str(REPO),
        log_file=build_log,
    )
    _push(image_name(target), archive)
    for old in ARCHIVES.glob(f"{target}-*.oci.tar"):
        if old != archive:
            old.unlink()
    log(
        f"built {image_name(target)} in {time.monotonic() - started:.0f}s ({archive.stat().st_size >> 20} MiB)"
    )
    return archive


def _push(name: str, archive: Path) -> None:
    staging = archive.with_suffix(f".tmp-{os.getpid()}")
    staging.unlink(missing_ok=True)
    # Uncompressed layers: gzip of a multi-GiB image costs minutes on two cores and buys nothing locally.
    buildah("push", "--disable-compression", name, f"oci-archive:{staging}:{name}")
    staging.rename(archive)


def pause_archive(*, log=print) -> Path:
    binary = cluster_build.ensure_built(node_build.PAUSE, log=log) / "bin" / "pause"
    archive = ARCHIVES / f"pause-{_digest(binary.read_bytes())}.oci.tar"
    if not archive.exists():
        ARCHIVES.mkdir(parents=True, exist_ok=True)
        container = buildah("from", "scratch").stdout.strip()
        buildah("copy", container, str(binary), "/pause")
        buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container)
        buildah("commit", "--rm", container, node.SANDBOX_IMAGE)
        _push(node.SANDBOX_IMAGE, archive)
    return archive


@contextlib.contextmanager
def _build_lock():
    """One image build at a time on this machine (two sessions, or a session and `make images`)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".images.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_all(*, log=print) -> dict[str, Path]:
    """name -> OCI archive for every image the node runs."""
    with _build_lock():
        base = base_image(log=log)
        archives = {node.SANDBOX_IMAGE: pause_archive(log=log)}
        for target in DOCKERFILES:
            archives[image_name(target)] = build(target, base, log=log)
    return archives


def prepare_node(bin_dir: Path, *, log=print) -> dict[str, Path]:
    """Everything the node needs built: the Debian packages first, then the Go builds (CPU-bound)
    and the image builds (mostly downloads and disk) side by side. Returns build_all()'s archives."""
    node_build.ensure_debian_packages(log=log)
    with ThreadPoolExecutor(max_workers=1) as pool:
        images = pool.submit(build_all, log=log)
        node_build.build_node(bin_dir, log=log)
        return images.result()


def import_into_node(archives: dict[str, Path], *, log=print) -> None:
    """ctr images import, skipped for an image containerd has with the archive's content."""
    present = subprocess.run(
        node.ctr_command("images", "ls", "-q"), capture_output=True, text=True, check=True
    ).stdout.split()
    stamps = node.CONTAINERD_ROOT / "imported"
    stamps.mkdir(parents=True, exist_ok=True)
    for name, archive in archives.items():
        stamp = stamps / archive.name
        if name in present and stamp.exists():
            continue
        started = time.monotonic()
        subprocess.run(
            node.ctr_command("images", "import", "--snapshotter", "overlayfs", str(archive)),
            check=True,
            capture_output=True,
        )
        for old in stamps.glob(f"{archive.name.split('-')[0]}-*"):
            old.unlink()
        stamp.touch()
        log(f"imported {name} in {time.monotonic() - started:.0f}s")
