"""A real Prometheus server for the e2e tests (Debian's `prometheus` package: /usr/bin/prometheus),
scraping static loopback targets every second and evaluating rule files, and a small client of its
HTTP API."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from e2e_kube import free_port

INSTALL_HINT = "install it with `apt-get install -y --no-install-recommends prometheus` (`make test` does)"


def prometheus_binary(name: str = "prometheus") -> Path:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        raise FileNotFoundError(f"no `{name}` binary: {INSTALL_HINT}")
    return Path(found)


@dataclass(frozen=True)
class ScrapeJob:
    name: str
    target: str  # host:port
    honor_labels: bool
    path: str = "/metrics"
    labels: tuple[tuple[str, str], ...] = ()  # target labels, as service discovery + relabeling give them


class PrometheusError(RuntimeError):
    pass


class Prometheus:
    """One server in `workdir`: config, rules, TSDB and log live there."""

    def __init__(
        self, workdir: Path, jobs: list[ScrapeJob], rule_groups: list[dict[str, Any]], interval: str = "1s"
    ):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.rules_file = workdir / "rules.yaml"
        self.rules_file.write_text(yaml.safe_dump({"groups": rule_groups}, sort_keys=False))
        self.config_file = workdir / "prometheus.yaml"
        self.config_file.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": interval,
                        "scrape_timeout": interval,
                        "evaluation_interval": interval,
                    },
                    "rule_files": [str(self.rules_file)],
                    "scrape_configs": [
                        {
                            "job_name": job.name,
                            "honor_labels": job.honor_labels,
                            "metrics_path": job.path,
                            "static_configs": [
                                {
                                    "targets": [job.target],
                                    **({"labels": dict(job.labels)} if job.labels else {}),
                                }
                            ],
                        }
                        for job in jobs
                    ],
                },
                sort_keys=False,
            )
        )
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(prometheus_binary()),
                    f"--config.file={self.config_file}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1d",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise PrometheusError(f"prometheus not ready after {timeout:.0f}s:\n{self.log()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422: a bad expression; the body says why
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at the current time: the vector's samples ({metric, value})."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr}: expected a vector, got {data['resultType']}")
        return data["result"]

    def targets_up(self) -> dict[str, bool]:
        return {t["labels"]["job"]: t["health"] == "up" for t in self.api("targets")["activeTargets"]}

    def firing_alerts(self) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["state"] == "firing"]


def finite_values(samples: list[dict[str, Any]]) -> list[float]:
    values = [float(sample["value"][1]) for sample in samples]
    return [v for v in values if math.isfinite(v)]
