"""Fixtures of the trainer tests: a tiny model, prompts and rewards built locally, one Ray cluster."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

# Before torch and deepspeed load (helpers import torch): these tests train on CPU, with passive
# OpenMP threads as `rlhf run` sets for CPU jobs (effective unless another suite loaded torch first).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402

from .helpers import TINY_REWARDS  # noqa: E402


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The demo's tiny Qwen2 (2 layers, hidden 64), character tokenizer and prompts."""
    from rlhf_trainer.demo.build import build_demo

    return build_demo(str(tmp_path_factory.mktemp("demo")))


@pytest.fixture(scope="session")
def reward_model_dir(tmp_path_factory: pytest.TempPathFactory, demo_assets: dict[str, str]) -> str:
    """A randomly initialised sequence-classification head on the tiny model (num_labels 1)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, Qwen2ForSequenceClassification

    path = str(tmp_path_factory.mktemp("reward-model"))
    config = AutoConfig.from_pretrained(demo_assets["model"], num_labels=1)
    torch.manual_seed(0)
    Qwen2ForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(demo_assets["model"]).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_rewards(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Puts the `tiny_rewards` module on sys.path (reward functions run in the driver)."""
    directory = tmp_path_factory.mktemp("rewards")
    (directory / "tiny_rewards.py").write_text(TINY_REWARDS)
    sys.path.insert(0, str(directory))
    return str(directory)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One Ray cluster of 2 CPUs for the whole session; the runner reuses it. (A GPU machine
    without Ray runs the local-backend tests only.)"""
    ray = pytest.importorskip("ray")

    from rlhf_trainer.backends.ray_backend import ray_init_options

    ray.init(**ray_init_options(num_cpus=2))
    yield
    ray.shutdown()


@pytest.fixture
def output(tmp_path: Path) -> Path:
    return tmp_path / "out"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build (or find cached) the object store before the first test that uses it, so a cold
    build (about 3 minutes) does not count against that test's timeout."""
    if session.config.option.collectonly:
        return
    if any("object_store" in getattr(item, "fixturenames", ()) for item in session.items):
        _objectstore_module().ensure_objectstore(log=lambda msg: print(f"[objectstore] {msg}"))


def _objectstore_module():  # e2e/objectstore.py: the build and server of the S3-compatible store
    e2e = str(Path(__file__).resolve().parents[2] / "e2e")
    if e2e not in sys.path:
        sys.path.insert(0, e2e)
    import objectstore

    return objectstore


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real S3-compatible server (versitygw, posix backend) on a loopback port for the session,
    its data directory a temporary directory; stopped at the end."""
    server = _objectstore_module().start_objectstore(tmp_path_factory.mktemp("objectstore"))
    yield server
    server.stop()
