"""The operator at scale on the real control plane (e2e/cluster.py), with KubeRay as the reference.

    .venv/bin/python bench/bench_operator_scale.py [--jobs 500] [--threads 16]

1. `rlhf operator --namespace NS` runs as a subprocess; N RLHFJobs (examples/grpo-qwen2.5-7b-math.yaml,
   renamed) are created at once by a pool of writer threads. Measured: seconds until every RayJob
   exists, and per job the seconds from its create call returning to its RayJob appearing.
2. Every RayJob's status is patched as KubeRay would write it (all N at once: Running/RUNNING,
   then Complete/SUCCEEDED); per job, the seconds from the status patch returning to the watch
   seeing the RLHFJob's phase change (Running, then Succeeded): p50/p99.
   The operator's peak RSS (VmHWM) and CPU seconds per stage come from /proc.
3. Reference, same run: the N RayJobs the operator rendered (owner references and status dropped)
   are given to the real KubeRay operator in a fresh namespace; seconds until every RayCluster exists.

Writes bench/results/operator_scale.json. Pods never run (no kubelet): the control plane is real,
the workloads are not, which is what an operator's own cost is measured against.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from common import REPO, RESULTS_DIR, bench_env, ratio, write_result
from kube_bench import Watcher, api_client, parallel, percentiles, proc_sample, wait_idle
from kubernetes import client as k8s

sys.path.insert(0, str(REPO / "e2e"))
import cluster  # noqa: E402  (e2e/cluster.py: the control plane the e2e tests use)

JOB_MANIFEST = REPO / "examples" / "grpo-qwen2.5-7b-math.yaml"
GROUP, VERSION, PLURAL = "rlhf.io", "v1alpha1", "rlhfjobs"
RAY = ("ray.io", "v1")
# What KubeRay writes while a RayJob runs and when it ends; the operator maps these to phases.
TRANSITIONS = (
    ("Running", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}),
    ("Succeeded", {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}),
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _job(name: str, namespace: str) -> dict[str, Any]:
    doc = yaml.safe_load(JOB_MANIFEST.read_text())
    doc["metadata"] = {"name": name, "namespace": namespace}
    return doc


class ControlPlane:
    """Brings the e2e control plane up unless it is up; stops only what this process started."""

    def __init__(self) -> None:
        self.started_cluster = False
        self.started_kuberay = False

    def __enter__(self) -> ControlPlane:
        self.started_cluster = not cluster.is_up()
        self.state = cluster.up(started_by="bench")
        cluster.add_lease(os.getpid())
        return self

    def kuberay_alive(self) -> bool:
        return cluster._alive("kuberay-operator")

    def start_kuberay(self) -> int:
        if not self.kuberay_alive():
            cluster.up(kuberay=True, started_by="bench")
            self.started_kuberay = True
        return int((cluster.PID_DIR / "kuberay-operator.pid").read_text())

    def __exit__(self, *exc: object) -> None:
        if self.started_kuberay:
            cluster._stop("kuberay-operator")
        cluster.leave(os.getpid())
        others = [
            p
            for p in (cluster.LEASE_DIR.glob("*") if cluster.LEASE_DIR.is_dir() else [])
            if p.name.isdigit() and Path(f"/proc/{p.name}").exists()
        ]
        if self.started_cluster and not others:
            cluster.down()


class Operator:
    """`rlhf operator` as a subprocess watching one namespace."""

    def __init__(
        self, namespace: str, env: dict[str, str], log_path: Path, wrapper: Path | None = None
    ) -> None:
        self.metrics_port, self.liveness_port = _free_port(), _free_port()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, str(wrapper)] if wrapper else [str(REPO / ".venv" / "bin" / "rlhf")]
        self.proc = subprocess.Popen(
            [
                *command,
                "operator",
                "--namespace",
                namespace,
                "--metrics-port",
                str(self.metrics_port),
                "--liveness-port",
                str(self.liveness_port),
            ],
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rlhf operator exited {self.proc.returncode}; see {log_path}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"rlhf operator not live after 120s; see {log_path}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _namespace(core: k8s.CoreV1Api, name: str) -> None:
    core.create_namespace({"metadata": {"name": name, "labels": {"rlhf.io/bench": "operator-scale"}}})


def _delete_namespace(core: k8s.CoreV1Api, name: str) -> None:
    with contextlib.suppress(Exception):
        core.delete_namespace(name)


def _start_profiler(pid: int, path: Path) -> subprocess.Popen:
    """py-spy sampling the operator (collapsed stacks; summarise with bench/profile_summary.py)."""
    return subprocess.Popen(
        [
            str(REPO / ".venv" / "bin" / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--rate",
            "50",
            "--format",
            "raw",
            "--threads",
            "-o",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop_profiler(profiler: subprocess.Popen | None) -> None:
    if profiler is not None and profiler.poll() is None:
        profiler.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            profiler.wait(30)


def measure_operator(
    api: k8s.ApiClient,
    namespace: str,
    jobs: int,
    threads: int,
    managed_by: str | None,
    timeout: float,
    profile: Path | None,
    wrapper: Path | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    custom = k8s.CustomObjectsApi(api)
    env = bench_env()
    env["KUBECONFIG"] = str(cluster.KUBECONFIG)
    if managed_by:
        env["RLHF_OPERATOR_RAYJOB_MANAGED_BY"] = managed_by
    names = [f"bench-{i:04d}" for i in range(jobs)]
    job_watch = Watcher(
        custom, GROUP, VERSION, PLURAL, namespace, key=lambda o: (o.get("status") or {}).get("phase")
    ).start()
    ray_watch = Watcher(custom, *RAY, "rayjobs", namespace).start()
    operator = Operator(namespace, env, RESULTS_DIR / "logs" / "operator_scale.operator.log", wrapper)
    pid = operator.proc.pid
    profiler = _start_profiler(pid, profile) if profile else None
    try:
        idle = proc_sample(pid)
        created: dict[str, float] = {}

        def create(name: str) -> None:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _job(name, namespace))
            created[name] = time.monotonic()

        t0 = time.monotonic()
        parallel(create, names, threads)
        t_applied = time.monotonic()
        if not ray_watch.wait_for(jobs, timeout=timeout):
            raise RuntimeError(f"only {ray_watch.count()} of {jobs} RayJobs after {timeout:.0f}s")
        t_all = max(ray_watch.time_of(f"{n}-a0") or 0 for n in names)
        creation = [ray_watch.time_of(f"{n}-a0") - created[n] for n in names]
        job_watch.wait_for(jobs, "Pending", timeout=timeout)
        after_create = proc_sample(pid)
        result: dict[str, Any] = {
            "jobs": jobs,
            "writer_threads": threads,
            "apply_s": t_applied - t0,
            "all_rayjobs_s": t_all - t0,
            "rayjob_creation_latency": percentiles(creation),
            "operator_cpu_s": {"create": after_create.cpu_s - idle.cpu_s},
            "operator_rss_mib": {"idle": idle.rss_mib},
        }
        wait_idle(pid, quiet_cpu_per_s=0.3, timeout=60)
        rayjobs = [custom.get_namespaced_custom_object(*RAY, namespace, "rayjobs", f"{n}-a0") for n in names]
        result["transitions"] = {}
        for phase, status in TRANSITIONS:
            before = proc_sample(pid)
            patched: dict[str, float] = {}

            def patch(
                name: str, status: dict[str, str] = status, patched: dict[str, float] = patched
            ) -> None:
                custom.patch_namespaced_custom_object_status(
                    *RAY, namespace, "rayjobs", f"{name}-a0", {"status": status}
                )
                patched[name] = time.monotonic()

            t_start = time.monotonic()
            parallel(patch, names, threads)
            if not job_watch.wait_for(jobs, phase, timeout=timeout):
                raise RuntimeError(f"only {job_watch.count(phase)} of {jobs} RLHFJobs reached {phase}")
            latencies = [job_watch.time_of(n, phase) - patched[n] for n in names]
            done = max(job_watch.time_of(n, phase) for n in names)
            after = proc_sample(pid)
            result["transitions"][phase] = {
                "rayjob_status": status,
                "patch_all_s": max(patched.values()) - t_start,
                "all_phases_s": done - t_start,
                "latency": percentiles(latencies),
                "operator_cpu_s": after.cpu_s - before.cpu_s,
            }
            wait_idle(pid, quiet_cpu_per_s=0.3, timeout=60)
        end = proc_sample(pid)
        result["operator_cpu_s"]["total"] = end.cpu_s
        result["operator_rss_mib"].update({"end": end.rss_mib, "peak": end.peak_rss_mib})
        result["managed_by"] = managed_by
        return result, rayjobs
    finally:
        _stop_profiler(profiler)
        operator.stop()
        job_watch.stop()
        ray_watch.stop()


def _as_fresh(rayjob: dict[str, Any], namespace: str) -> dict[str, Any]:
    """A rendered RayJob as a new object: no server-set metadata, no owner, no status, KubeRay-managed."""
    obj = copy.deepcopy(rayjob)
    meta = obj["metadata"]
    obj["metadata"] = {
        "name": meta["name"],
        "namespace": namespace,
        "labels": meta.get("labels", {}),
        "annotations": meta.get("annotations", {}),
    }
    obj.pop("status", None)
    obj["spec"].pop("managedBy", None)
    return obj


def measure_kuberay(
    api: k8s.ApiClient,
    plane: ControlPlane,
    namespace: str,
    rayjobs: list[dict[str, Any]],
    threads: int,
    timeout: float,
) -> dict[str, Any]:
    custom = k8s.CustomObjectsApi(api)
    pid = plane.start_kuberay()
    cluster_watch = Watcher(custom, *RAY, "rayclusters", namespace).start()
    try:
        before = proc_sample(pid)
        objs = [_as_fresh(r, namespace) for r in rayjobs]
        t0 = time.monotonic()
        parallel(
            lambda o: custom.create_namespaced_custom_object(*RAY, namespace, "rayjobs", o), objs, threads
        )
        t_applied = time.monotonic()
        if not cluster_watch.wait_for(len(objs), timeout=timeout):
            raise RuntimeError(
                f"KubeRay made {cluster_watch.count()} of {len(objs)} RayClusters in {timeout:.0f}s"
            )
        t_all = max(cluster_watch.seen.values())
        after = proc_sample(pid)
        return {
            "rayjobs": len(objs),
            "apply_s": t_applied - t0,
            "all_rayclusters_s": t_all - t0,
            "kuberay_cpu_s": after.cpu_s - before.cpu_s,
            "kuberay_rss_mib": {"end": after.rss_mib, "peak": after.peak_rss_mib},
            "kuberay_started_here": plane.started_kuberay,
        }
    finally:
        cluster_watch.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--threads", type=int, default=16, help="writer threads applying objects at once")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per stage")
    parser.add_argument("--skip-kuberay", action="store_true", help="operator only, no reference run")
    parser.add_argument(
        "--operator-wrapper",
        type=Path,
        default=None,
        help="run this script instead of `rlhf` (same arguments): for trying operator changes",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy the operator into this collapsed-stack file (adds sampling overhead)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()

    stamp = time.strftime("%H%M%S")
    op_ns, ray_ns = f"bench-op-{stamp}", f"bench-kuberay-{stamp}"
    with ControlPlane() as plane:
        api = api_client(cluster.KUBECONFIG, pool=args.threads + 8)
        core = k8s.CoreV1Api(api)
        # A KubeRay already running (another session's) would pick the operator's RayJobs up and race
        # the status patches; managedBy hands them to "another controller" so KubeRay leaves them be.
        managed_by = "kueue.x-k8s.io/multikueue" if plane.kuberay_alive() else None
        _namespace(core, op_ns)
        try:
            operator, rayjobs = measure_operator(
                api,
                op_ns,
                args.jobs,
                args.threads,
                managed_by,
                args.timeout,
                args.profile,
                args.operator_wrapper,
            )
            reference = None
            if not args.skip_kuberay:
                _namespace(core, ray_ns)
                reference = measure_kuberay(api, plane, ray_ns, rayjobs, args.threads, args.timeout)
        finally:
            _delete_namespace(core, op_ns)
            _delete_namespace(core, ray_ns)
    result: dict[str, Any] = {"operator": operator, "kuberay": reference}
    if reference is not None:
        result["ratio_all_rayjobs_vs_kuberay_all_rayclusters"] = ratio(
            operator["all_rayjobs_s"], reference["all_rayclusters_s"]
        )
    if args.operator_wrapper:
        result["operator_wrapper"] = str(args.operator_wrapper)
    path = write_result("operator_scale", result, args.results_dir)
    lat = {p: t["latency"] for p, t in operator["transitions"].items()}
    print(
        f"operator: {args.jobs} RLHFJobs -> all RayJobs in {operator['all_rayjobs_s']:.1f}s; "
        + "; ".join(f"->{p} p50 {v['p50_s']:.2f}s p99 {v['p99_s']:.2f}s" for p, v in lat.items())
        + f"; peak RSS {operator['operator_rss_mib']['peak']:.0f} MiB, "
        f"CPU {operator['operator_cpu_s']['total']:.1f}s"
    )
    if reference is not None:
        print(
            f"KubeRay: {args.jobs} RayJobs -> all RayClusters in {reference['all_rayclusters_s']:.1f}s; "
            f"ratio {result['ratio_all_rayjobs_vs_kuberay_all_rayclusters']:.2f}"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
