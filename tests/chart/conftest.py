"""Fixtures of the chart tests. helm comes from the pinned Go module the e2e control plane is
built from (e2e/cluster_build.py); it is built (or linked from ~/.cache/rlhf-operator-e2e/) after
collection, before the first test, so a cold build does not count against a test's timeout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .chartlib import BIN_DIR, E2E_DIR, helm_binary

CHART_TESTS = Path(__file__).resolve().parent


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly or helm_binary().exists():
        return
    if not any(
        CHART_TESTS in Path(str(item.path)).parents and "helm_home" in getattr(item, "fixturenames", ())
        for item in session.items
    ):
        return
    sys.path.insert(0, str(E2E_DIR))
    import cluster_build

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")

    def log(msg: str) -> None:
        if reporter is not None:
            reporter.write_line(f"[chart] {msg}")

    cluster_build.link_binaries(cluster_build.ensure_built(cluster_build.KUBE, log=log), BIN_DIR)


@pytest.fixture(scope="session")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HELM_*_HOME for every helm call of the session."""
    return tmp_path_factory.mktemp("helm-home")
