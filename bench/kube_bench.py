"""Tools of the operator-scale benchmark: watches that time-stamp what they see, parallel writes,
and /proc readings of a process's peak RSS and CPU seconds."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException


def api_client(kubeconfig: Path, pool: int = 32) -> k8s.ApiClient:
    """Admin client with a connection pool as wide as the writer threads (urllib3's default is 4)."""
    configuration = k8s.Configuration()
    k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = pool
    return k8s.ApiClient(configuration)


@dataclass
class Watcher:
    """Watches one custom-resource collection of a namespace in a thread; records, per object name,
    the monotonic time each `key(obj)` value was first seen (key None: only first sight)."""

    api: k8s.CustomObjectsApi
    group: str
    version: str
    plural: str
    namespace: str
    key: Callable[[dict[str, Any]], str | None] = lambda obj: None
    seen: dict[tuple[str, str | None], float] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Watcher:
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.plural}", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"watch of {self.plural} in {self.namespace} did not start")
        return self

    def stop(self) -> None:
        self._stop.set()

    def _record(self, obj: dict[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        with self._lock:
            self.names.add(name)
            self.seen.setdefault((name, None), now)
            value = self.key(obj)
            if value is not None:
                self.seen.setdefault((name, value), now)

    def _run(self) -> None:
        version = None
        while not self._stop.is_set():
            try:
                listing = self.api.list_namespaced_custom_object(
                    self.group, self.version, self.namespace, self.plural
                )
                now = time.monotonic()
                for obj in listing.get("items", []):
                    self._record(obj, now)
                version = listing["metadata"]["resourceVersion"]
                self._ready.set()
                stream = k8s_watch.Watch().stream(
                    self.api.list_namespaced_custom_object,
                    self.group,
                    self.version,
                    self.namespace,
                    self.plural,
                    resource_version=version,
                    timeout_seconds=60,
                    allow_watch_bookmarks=True,
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._record(event["object"], time.monotonic())
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: the resourceVersion expired; list again
                    time.sleep(0.5)
            except Exception:  # noqa: BLE001 - a dropped connection: list and watch again
                time.sleep(0.5)

    def count(self, value: str | None = None) -> int:
        with self._lock:
            return sum(1 for (_, v) in self.seen if v == value)

    def time_of(self, name: str, value: str | None = None) -> float | None:
        with self._lock:
            return self.seen.get((name, value))

    def wait_for(self, count: int, value: str | None = None, timeout: float = 600) -> bool:
        deadline = time.monotonic() + timeout
        while self.count(value) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def parallel(fn: Callable[[Any], Any], items: Iterable[Any], threads: int) -> list[Any]:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(fn, items))


@dataclass(frozen=True)
class ProcSample:
    cpu_s: float
    rss_mib: float
    peak_rss_mib: float


def proc_sample(pid: int) -> ProcSample:
    """CPU seconds (user + system, all threads) and current/peak RSS of a live process, from /proc.
    VmHWM is the kernel's own high-water mark of the resident set: no polling gaps."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15 of stat)
    status = {
        line.split(":")[0]: line.split(":")[1].strip()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    }
    kib = lambda key: int(status.get(key, "0 kB").split()[0])  # noqa: E731
    return ProcSample(cpu_s=cpu, rss_mib=kib("VmRSS") / 1024, peak_rss_mib=kib("VmHWM") / 1024)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def pct(p: float) -> float:  # nearest-rank
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]

    return {
        "n": len(ordered),
        "p50_s": pct(50),
        "p90_s": pct(90),
        "p99_s": pct(99),
        "max_s": ordered[-1],
        "mean_s": statistics.fmean(ordered),
    }


def wait_idle(pid: int, quiet_cpu_per_s: float = 0.05, window: float = 2.0, timeout: float = 120) -> float:
    """Wait until the process uses less than `quiet_cpu_per_s` CPU seconds per second over `window`.
    Returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        before = proc_sample(pid).cpu_s
        time.sleep(window)
        if (proc_sample(pid).cpu_s - before) / window < quiet_cpu_per_s:
            break
    return time.monotonic() - start
