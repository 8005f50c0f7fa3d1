"""The Dockerfiles install this package and point at real entrypoints: the `rlhf` console script
of pyproject.toml and its `operator` / `train` subcommands. (No Docker engine here: the images are
built by images/build.sh where one exists.)"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

from rlhf_trainer.cli import build_parser

from .chartlib import REPO

IMAGES = REPO / "images"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    result = []
    for line in lines:
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def pip_targets(dockerfile: Path) -> list[str]:
    """What the RUN lines hand to `pip install` / `pip wheel` (options and their values dropped)."""
    targets = []
    takes_value = {"-c", "--constraint", "-r", "--requirement", "--wheel-dir", "-w", "-t", "--target"}
    for word, rest in instructions(dockerfile):
        if word != "RUN":
            continue
        for command in re.split(r"&&|;", rest):
            argv = shlex.split(command)
            while argv and "=" in argv[0]:  # VAR=value prefixes
                argv = argv[1:]
            if len(argv) < 2 or argv[0] not in ("pip", "pip3") or argv[1] not in ("install", "wheel"):
                continue
            args = iter(argv[2:])
            for arg in args:
                if arg in takes_value:
                    next(args, None)
                elif not arg.startswith("-"):
                    targets.append(arg)
    return targets


def copies(dockerfile: Path) -> list[str]:
    return [rest for word, rest in instructions(dockerfile) if word == "COPY"]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def subcommands() -> set[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return set(sub.choices)


def test_rlhf_console_script_and_subcommands_exist() -> None:
    assert pyproject()["project"]["scripts"]["rlhf"] == "rlhf_trainer.cli:main"
    assert {"operator", "train"} <= subcommands()


def test_operator_image_installs_this_package_without_extras() -> None:
    dockerfile = IMAGES / "operator" / "Dockerfile"
    copied = " ".join(copies(dockerfile))
    for source in ("pyproject.toml", "operator/", "trainer/", "README.md"):
        assert source in copied, f"operator image does not COPY {source}"
    targets = pip_targets(dockerfile)
    assert "." in targets, targets  # pip wheel . (this package), then the wheel is installed
    assert not any("[" in t for t in targets), f"the operator image installs extras: {targets}"
    assert "/wheels/*.whl" in targets


def test_operator_image_runs_rlhf_operator_as_non_root() -> None:
    steps = instructions(IMAGES / "operator" / "Dockerfile")
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    assert ("ENTRYPOINT", '["rlhf"]') in final
    assert ("CMD", '["operator"]') in final
    (user,) = [rest for word, rest in final if word == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    (base,) = [rest for word, rest in steps if word == "ARG" and rest.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.1[1-9]-slim(-\w+)?", base), base
    assert final[0] == ("FROM", "${PYTHON_IMAGE}")


def test_trainer_image_installs_this_package_with_trainer_and_vllm_extras() -> None:
    dockerfile = IMAGES / "trainer" / "Dockerfile"
    copied = " ".join(copies(dockerfile))
    for source in ("pyproject.toml", "operator/", "trainer/", "images/trainer/constraints.txt"):
        assert source in copied, f"trainer image does not COPY {source}"
    targets = pip_targets(dockerfile)
    assert ".[trainer,vllm]" in targets, targets
    for package in ("torch", "flash-attn", "deepspeed", "vllm", "ray[default]"):
        assert package in targets, f"trainer image does not install {package}"
    steps = instructions(dockerfile)
    assert any(w == "ARG" and "nvidia/cuda:" in rest for w, rest in steps)
    assert any(w == "USER" and rest.split(":")[0] not in ("0", "root") for w, rest in steps)
    # `rlhf` is on PATH: KubeRay runs the entrypoint `rlhf train --config ...` in these pods.
    assert any(w == "RUN" and "rlhf train --help" in rest for w, rest in steps)


def test_trainer_pins_are_exact_and_agree_with_pyproject() -> None:
    pins = {}
    for line in (IMAGES / "trainer" / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name] = version
    assert {"torch", "vllm", "deepspeed", "flash-attn", "ray"} <= set(pins)
    # Every pyproject requirement on a pinned package is a lower bound the pin satisfies.
    from packaging.requirements import Requirement

    project = pyproject()["project"]
    requirements = project["dependencies"] + [
        r for extra in ("trainer", "vllm") for r in project["optional-dependencies"][extra]
    ]
    for text in requirements:
        req = Requirement(text)
        if req.name in pins:
            assert req.specifier.contains(pins[req.name]), f"{req} vs pin {pins[req.name]}"


def _tools_without_buildah(tmp_path: Path) -> Path:
    """A PATH directory with what build.sh needs besides the builders (so no buildah either)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sed", "head", "dirname", "bash", "env"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return bin_dir


def test_build_script_says_clearly_when_no_builder_is_there(tmp_path: Path) -> None:
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///x.sock.' >&2\nexit 1\n")
    fake.chmod(0o755)
    proc = subprocess.run(
        ["bash", str(IMAGES / "build.sh")],
        capture_output=True,
        text=True,
        env={"PATH": str(_tools_without_buildah(tmp_path)), "DOCKER": str(fake)},
        timeout=30,
    )
    assert proc.returncode == 1
    assert "neither a reachable Docker engine" in proc.stderr and "nor buildah" in proc.stderr


def test_build_script_builds_with_buildah_without_a_docker_engine(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    bin_dir = _tools_without_buildah(tmp_path)
    (bin_dir / "buildah").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (bin_dir / "buildah").chmod(0o755)
    proc = subprocess.run(
        ["bash", str(IMAGES / "build.sh"), "trainer-cpu"],
        capture_output=True,
        text=True,
        env={"PATH": str(bin_dir), "DOCKER": str(tmp_path / "no-docker"), "REGISTRY": "reg.example/rlhf"},
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    version = pyproject()["project"]["version"]
    assert log.read_text().splitlines() == [
        "bud --layers --network host --ignorefile images/trainer/Dockerfile.cpu.dockerignore "
        f"-f images/trainer/Dockerfile.cpu -t reg.example/rlhf/trainer-cpu:{version} ."
    ]


def test_build_script_tags_images_with_the_package_version(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    fake = tmp_path / "docker"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    proc = subprocess.run(
        [str(IMAGES / "build.sh"), "all"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "DOCKER": str(fake), "REGISTRY": "reg.example/rlhf"},
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    version = pyproject()["project"]["version"]
    calls = log.read_text().splitlines()
    assert calls[0] == "info"
    assert calls[1] == f"build -f images/operator/Dockerfile -t reg.example/rlhf/operator:{version} ."
    assert calls[2] == f"build -f images/trainer/Dockerfile -t reg.example/rlhf/trainer:{version} ."
    assert calls[3] == f"build -f images/trainer/Dockerfile.cpu -t reg.example/rlhf/trainer-cpu:{version} ."


def test_the_cpu_trainer_image_has_the_gpu_images_layout_user_and_settings() -> None:
    gpu, cpu = (instructions(IMAGES / "trainer" / name) for name in ("Dockerfile", "Dockerfile.cpu"))
    for word in ("USER", "WORKDIR"):
        assert [r for w, r in gpu if w == word][-1] == [r for w, r in cpu if w == word][-1]
    env = " ".join(rest for word, rest in cpu if word == "ENV")
    for setting in ("VIRTUAL_ENV=/opt/venv", "PATH=/opt/venv/bin:$PATH", "RAY_USAGE_STATS_ENABLED=0"):
        assert setting in env
    assert "rlhf train --help" in " ".join(rest for word, rest in cpu if word == "RUN")
    installs = " ".join(rest for word, rest in cpu if word == "RUN" and "pip install" in rest)
    assert '".[trainer]"' in installs and "vllm" not in installs


def test_trainer_image_user_is_the_uid_and_gid_the_operator_runs_pods_as() -> None:
    from rlhf_operator.isolation import POD_SECURITY_CONTEXT, TRAINER_UID

    steps = instructions(IMAGES / "trainer" / "Dockerfile")
    (user,) = [rest for word, rest in steps if word == "USER"]
    assert user == f"{TRAINER_UID}:{TRAINER_UID}"
    assert POD_SECURITY_CONTEXT["fsGroup"] == POD_SECURITY_CONTEXT["runAsGroup"] == TRAINER_UID
    created = " ".join(rest for word, rest in steps if word == "RUN" and "useradd" in rest)
    assert f"--uid {TRAINER_UID}" in created and f"--gid {TRAINER_UID}" in created


def test_the_rayjobs_ray_version_is_the_trainer_images() -> None:
    from rlhf_operator.render import RAY_VERSION

    pins = (IMAGES / "trainer" / "constraints.txt").read_text().split()
    assert f"ray=={RAY_VERSION}" in pins
