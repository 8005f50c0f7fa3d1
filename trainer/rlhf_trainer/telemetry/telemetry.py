"""Per-step telemetry: metrics.jsonl, progress display, Prometheus, the status sink, the plot."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, TextIO

from ..api.job import TrainerConfig
from ..api.status import ResumeRecord, SkippedCheckpoint
from ..rewards.naming import reward_source_names
from .plot import panels_for, read_rows, write_curves
from .progress import ProgressDisplay
from .prometheus import PrometheusExporter
from .sinks import FileStatusSink, KubernetesStatusSink, NullStatusSink, StatusSink
from .status import add_checkpoint, checkpoint_entry, eta_seconds, failure_entry, progress, trainer_status

log = logging.getLogger(__name__)


def make_status_sink(config: TrainerConfig) -> StatusSink:
    if config.status_sink == "kubernetes":
        return KubernetesStatusSink(config.namespace, config.job_name)
    if config.status_sink == "file":
        return FileStatusSink(os.path.join(config.output_dir, "status.json"))
    return NullStatusSink()


def record_failure(config: TrainerConfig, permanent: bool, reason: str, message: str) -> None:
    """Write status.failure through the job's status sink, keeping the trainer fields already
    there. Never raises: reporting a failure must not hide it."""
    try:
        sink = make_status_sink(config)
    except Exception:
        log.exception("could not record the failure in the status")
        return
    record_failure_in(sink, config.attempt, permanent, reason, message)


def record_failure_in(sink: StatusSink, attempt: int, permanent: bool, reason: str, message: str) -> None:
    try:
        status = {**sink.read(), "failure": failure_entry(attempt, permanent, reason, message)}
        sink.update(status, force=True)
        sink.flush()
    except Exception:
        log.exception("could not record the failure in the status")


def sink_from_raw_config(data: Any) -> tuple[StatusSink, int] | None:
    """The status sink and attempt named by a trainer config that failed validation, when the
    fields that locate the job are readable (a trainer older or newer than its operator)."""
    if not isinstance(data, dict) or not isinstance(data.get("jobName"), str):
        return None
    attempt = data.get("attempt") if isinstance(data.get("attempt"), int) else 0
    kind = data.get("statusSink", "file")
    if kind == "kubernetes":
        return KubernetesStatusSink(str(data.get("namespace") or "default"), data["jobName"]), attempt
    if kind == "file" and isinstance(data.get("outputDir"), str):
        return FileStatusSink(os.path.join(data["outputDir"], "status.json")), attempt
    return None


class Telemetry:
    """One per run, on the driver. `log_step` after every RL step, `checkpoint_saved` after
    every checkpoint, `close` at the end (also after a failure)."""

    def __init__(
        self,
        config: TrainerConfig,
        total_steps: int,
        algorithm: str,
        sink: StatusSink | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.config = config
        self.total_steps = total_steps
        self.algorithm = algorithm
        os.makedirs(config.output_dir, exist_ok=True)
        self.metrics_path = os.path.join(config.output_dir, "metrics.jsonl")
        self.curves_path = os.path.join(config.output_dir, "curves.png")
        self.keep = config.spec.checkpoint.keep if config.spec.checkpoint is not None else 1
        self.sink = sink if sink is not None else make_status_sink(config)
        # A restarted attempt keeps listing the checkpoints the earlier ones wrote.
        self.checkpoints: list[dict[str, Any]] = list(self.sink.read().get("checkpoints") or [])
        self.step = 0
        self.metrics: dict[str, float] = {}
        self.step_times: list[float] = []
        self._last_log = time.monotonic()
        self._progress: dict[str, Any] | None = None
        self._resume: dict[str, Any] | None = None
        self.superseded = False
        self.run = 0  # the checkpoint store's run number of this attempt (lifecycle.open_store)
        self._display = ProgressDisplay(total_steps, stream)
        self.exporter: PrometheusExporter | None = None
        if config.metrics_port > 0:
            self.exporter = PrometheusExporter(
                config.namespace, config.job_name, algorithm, reward_source_names(config.spec)
            )
            self.exporter.serve(config.metrics_port)

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        now_mono, now = time.monotonic(), time.time()
        values = {key: _number(key, value) for key, value in metrics.items()}
        step_time = values.get("timing/step_s")
        if step_time is None or not math.isfinite(step_time):
            step_time = now_mono - self._last_log
        self._last_log = now_mono
        self.step_times.append(step_time)
        self.step = step
        self.metrics = values

        row = {"step": step, "time": now, **{k: (v if math.isfinite(v) else None) for k, v in values.items()}}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

        eta = eta_seconds(self.step_times, step, self.total_steps)
        self._progress = progress(step, self.total_steps, eta, values.get("reward/mean"), now)
        self._display.update(step, values, eta)
        if self.exporter is not None:
            self.exporter.update(step, self.total_steps, values)
        if not self._superseded():  # one status read per step: steps take seconds to minutes
            self.sink.update(self._status(), force=step >= self.total_steps)

    def checkpoint_saved(self, step: int, path: str, hf_path: str | None = None) -> None:
        if self._superseded():
            return
        entry = checkpoint_entry(step, path, hf_path, time.time(), self.config.attempt, self.run)
        self.checkpoints = add_checkpoint(self.checkpoints, entry, self.keep)
        self.sink.update(self._status(), force=True)

    def _superseded(self) -> bool:
        """True once a newer attempt (or a newer run of this attempt: a suspended job started
        again) has recorded a checkpoint: from then on this run writes no status, so
        status.latestCheckpoint never moves back to an older run's."""
        if not self.superseded:
            stored = self.sink.read().get("latestCheckpoint") or {}
            attempt, run = stored.get("attempt"), stored.get("run") or 0
            if isinstance(attempt, int) and (attempt, run) > (self.config.attempt, self.run):
                log.warning(
                    "attempt %d run %d superseded by attempt %d run %d: leaving the job's status to it",
                    self.config.attempt,
                    self.run,
                    attempt,
                    run,
                )
                self.superseded = True
        return self.superseded

    def resumed(self, path: str | None, step: int, skipped: list[tuple[str, str]]) -> None:
        """Record where this attempt resumed from and the newer checkpoints it skipped."""
        self._resume = ResumeRecord(
            attempt=self.config.attempt,
            path=path,
            step=step,
            skipped=[SkippedCheckpoint(path=p, reason=r[:1024]) for p, r in skipped[:16]],
        ).to_wire()
        self.sink.update(self._status(), force=True)

    def close(self, success: bool) -> None:
        self._display.close()
        try:
            rows = read_rows(self.metrics_path)
            outcome = "" if success else " (failed)"
            write_curves(
                rows,
                self.curves_path,
                title=f"{self.config.job_name} ({self.algorithm}){outcome}",
                panels=panels_for(self.algorithm),
            )
        except Exception:
            # The plot is a convenience; its failure must not mask how training ended.
            log.exception("could not write %s", self.curves_path)
        if (self._progress is not None or self.checkpoints) and not self.superseded:
            self.sink.update(self._status(), force=True)
            self.sink.flush()
        if self.exporter is not None:
            self.exporter.close()

    def _status(self) -> dict[str, Any]:
        return trainer_status(self._progress, self.metrics, self.checkpoints, self._resume)


def _number(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__}") from exc
