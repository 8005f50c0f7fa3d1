"""Build and cache the control-plane binaries from pinned Go modules.

The pins live in the wrapper modules under e2e/gomod/ (go.mod + go.sum, nothing else):

- gomod/kube:    k8s.io/kubernetes (kube-apiserver, kube-controller-manager, kubectl), etcd's server
                 module and helm, which all share client-go/apimachinery at v0.x.y, so ONE `go build`
                 compiles the shared packages once.
- gomod/kuberay: the KubeRay operator (its own client-go/controller-runtime versions) and its CRDs.

Each module is built into ~/.cache/rlhf-operator-e2e/<pin>/, where <pin> names the main version and
a hash of go.mod, go.sum, the build flags and the Go version. A fresh clone on the same machine
finds the same <pin> and does not rebuild. The checkout only links to it (.cache/e2e/bin/).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

E2E_DIR = Path(__file__).resolve().parent
GOMOD_DIR = E2E_DIR / "gomod"
CACHE_ROOT = Path(os.environ.get("RLHF_E2E_CACHE_DIR", Path.home() / ".cache" / "rlhf-operator-e2e"))

KUBERAY_MODULE = "github.com/ray-project/kuberay/ray-operator"


@dataclass(frozen=True)
class GoModule:
    """One wrapper module and the main packages built from it in a single `go build`."""

    name: str
    main_module: str  # the module whose version names the pin
    packages: tuple[str, ...]

    @property
    def dir(self) -> Path:
        return GOMOD_DIR / self.name

    def required_version(self, module: str) -> str:
        """The version go.mod requires of `module` (so the pins are written in one place)."""
        text = (self.dir / "go.mod").read_text()
        match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
        if not match:
            raise RuntimeError(f"{self.dir / 'go.mod'}: no requirement on {module}")
        return match.group(1)

    def ldflags(self) -> str:
        # Version stamps, as Kubernetes' and helm's release builds set them: helm checks a chart's
        # kubeVersion against the server's version, which would be v0.0.0-master without them.
        kube = self.required_version("k8s.io/kubernetes") if self.name in ("kube", "kubenode") else ""
        flags = ["-s", "-w"]
        if kube:
            major, minor = kube.lstrip("v").split(".")[:2]
            for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
                flags += [
                    f"-X {pkg}.gitVersion={kube}",
                    f"-X {pkg}.gitMajor={major}",
                    f"-X {pkg}.gitMinor={minor}",
                    f"-X {pkg}.gitTreeState=clean",
                ]
            if self.name == "kube":
                helm = self.required_version("helm.sh/helm/v4")
                flags.append(f"-X helm.sh/helm/v4/internal/version.version={helm}")
        return " ".join(flags)

    def pin(self) -> str:
        digest = hashlib.sha256()
        for name in ("go.mod", "go.sum", *sorted(p.name for p in self.dir.glob("*.go"))):
            digest.update((self.dir / name).read_bytes())
        digest.update(self.ldflags().encode())
        digest.update(go_version().encode())
        version = self.required_version(self.main_module) if self.main_module else "local"
        return f"{self.name}-{version}-{digest.hexdigest()[:10]}"

    def cache_dir(self) -> Path:
        return CACHE_ROOT / self.pin()


KUBE = GoModule(
    name="kube",
    main_module="k8s.io/kubernetes",
    packages=(
        "k8s.io/kubernetes/cmd/kube-apiserver",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
        "k8s.io/kubernetes/cmd/kubectl",
        "go.etcd.io/etcd/server/v3",
        "helm.sh/helm/v4/cmd/helm",
    ),
)
# The node's Kubernetes parts (same pin as KUBE; a module of its own so that the control plane's
# cache key does not change and a control-plane-only run never builds them).
KUBENODE = GoModule(
    name="kubenode",
    main_module="k8s.io/kubernetes",
    packages=(
        "k8s.io/kubernetes/cmd/kubelet",
        "k8s.io/kubernetes/cmd/kube-proxy",
        "k8s.io/kubernetes/cmd/kube-scheduler",
    ),
)
KUBERAY = GoModule(
    name="kuberay",
    main_module=KUBERAY_MODULE,
    packages=(KUBERAY_MODULE,),
)
# `go build -o DIR/` names a binary after its package path less a /vN suffix: etcd gives "server".
RENAMES = {"server": "etcd"}


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GOTOOLCHAIN"] = "local"  # never download a toolchain: a pin needing a newer Go is a wrong pin
    env["CGO_ENABLED"] = "0"
    env["GOFLAGS"] = (
        " ".join(f for f in env.get("GOFLAGS", "").split() if not f.startswith("-mod=")) + " -mod=readonly"
    )
    return env


_GO_VERSION: str | None = None


def go_version() -> str:
    global _GO_VERSION
    if _GO_VERSION is None:
        if shutil.which("go") is None:
            raise RuntimeError("`go` is not on PATH: the e2e control plane is built from Go modules")
        _GO_VERSION = subprocess.run(
            ["go", "env", "GOVERSION"], env=go_env(), check=True, capture_output=True, text=True
        ).stdout.strip()
    return _GO_VERSION


def ensure_built(module: GoModule, *, log=print) -> Path:
    """Return the cache dir holding module's bin/, building it if missing."""
    target = module.cache_dir()
    if (target / "bin").is_dir():
        return target
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    # A lock per pin: two test sessions (or a session and `make cluster-up`) must not build twice.
    with open(CACHE_ROOT / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "bin").is_dir():
            return target
        staging = CACHE_ROOT / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "bin").mkdir(parents=True)
        jobs = os.environ.get("RLHF_E2E_GO_JOBS", str(os.cpu_count() or 2))
        cmd = [
            "nice",  # a cold build takes minutes of both cores: let the tests and editors go first
            "-n",
            "10",
            "go",
            "build",
            "-p",
            jobs,
            "-trimpath",
            f"-ldflags={module.ldflags()}",
            "-o",
            f"{staging / 'bin'}/",
            *module.packages,
        ]
        log(f"building {target.name} (one `go build` of {len(module.packages)} packages, -p {jobs}) ...")
        started = time.monotonic()
        build_log = CACHE_ROOT / f"{target.name}.build.log"
        with open(build_log, "w") as out:
            result = subprocess.run(cmd, cwd=module.dir, env=go_env(), stdout=out, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            tail = "\n".join(build_log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(
                f"go build in {module.dir} failed (exit {result.returncode}); {build_log}:\n{tail}"
            )
        for old, new in RENAMES.items():
            if (staging / "bin" / old).exists():
                (staging / "bin" / old).rename(staging / "bin" / new)
        staging.rename(target)
        log(f"built {target.name} in {time.monotonic() - started:.0f}s -> {target}")
    return target


def kuberay_crds_dir(*, log=print) -> Path:
    """KubeRay's CRD YAML (config/crd/bases of the pinned module): needs a download, not a build."""
    target = CACHE_ROOT / f"kuberay-crds-{KUBERAY.required_version(KUBERAY_MODULE)}"
    if not target.is_dir():
        CACHE_ROOT.mkdir(parents=True, exist_ok=True)
        staging = CACHE_ROOT / f".{target.name}.tmp-{os.getpid()}"
        _copy_kuberay_crds(staging)
        try:
            staging.rename(target)
        except OSError:  # another process got there first
            shutil.rmtree(staging, ignore_errors=True)
        log(f"KubeRay CRDs -> {target}")
    return target


def _copy_kuberay_crds(dest: Path) -> None:
    version = KUBERAY.required_version(KUBERAY_MODULE)
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{KUBERAY_MODULE}@{version}"],
        cwd=KUBERAY.dir,
        env=go_env(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(r'"Dir":\s*"([^"]+)"', out)
    if not match:
        raise RuntimeError(f"go mod download {KUBERAY_MODULE}@{version} gave no Dir: {out}")
    bases = Path(match.group(1)) / "config" / "crd" / "bases"
    dest.mkdir(parents=True, exist_ok=True)
    for crd in sorted(bases.glob("*.yaml")):
        shutil.copyfile(crd, dest / crd.name)


def link_binaries(cache_dir: Path, bin_dir: Path) -> None:
    """Point bin_dir/<name> at the cached binaries (the checkout keeps links, not copies)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for binary in sorted((cache_dir / "bin").iterdir()):
        link = bin_dir / binary.name
        if link.is_symlink() or link.exists():
            if link.resolve() == binary.resolve():
                continue
            link.unlink()
        link.symlink_to(binary)


def build_all(bin_dir: Path, *, kuberay: bool = True, log=print) -> None:
    started = time.monotonic()
    link_binaries(ensure_built(KUBE, log=log), bin_dir)
    if kuberay:
        link_binaries(ensure_built(KUBERAY, log=log), bin_dir)
    log(f"binaries ready in {time.monotonic() - started:.1f}s: {bin_dir}")


if __name__ == "__main__":
    sys.exit("use e2e/cluster.py build")
