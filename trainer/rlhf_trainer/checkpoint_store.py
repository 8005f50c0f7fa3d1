"""Committed checkpoints, fenced by attempt and run, in a directory (`spec.checkpoint.path` on a
volume) or an S3-compatible bucket (`s3://bucket/prefix`). One store, two backends
(checkpoint_backends.py): the layout, the commit, the fencing, the listing and the pruning are
here, the backends only list, write, time and delete files.

Layout under the root:

  attempts/a000003.r001               the claim of run 1 of attempt 3, made when that run starts
  step_000010.a000003.r001/...        the files of the step-10 checkpoint that run wrote
  step_000010.a000003.r001/COMMITTED  the commit marker, written last: {step, attempt, run, files: {name: size}}

A fence is (attempt, run): the attempt is the operator's number (a new one after each failure it
restarts), the run is taken by every start of the trainer within its attempt (the next number
free among the attempt's claims), so a suspended or preempted job that starts again under the same
attempt is newer than its earlier run, which may still be committing in its grace period.

- Commit marker last. A checkpoint without it (a save killed half-way) is never read; the next
  prune of a newer run deletes it. On a filesystem the files are fsynced before the marker, and the
  marker is written to a temporary name, fsynced and renamed into place.
- Fencing. Every run writes under its own name. Before it writes a marker it lists the claims:
  when a newer run has claimed the root, it commits nothing (`SupersededError`). A marker that
  slipped in after a newer claim anyway (a race of milliseconds) is ignored by readers: it is
  younger than that claim. On a filesystem, claims and commits also take a lock (flock on
  attempts/.lock), which closes that race wherever the filesystem's locks reach every writer.
- Legacy layout. `step_000010/` with a `COMPLETE` marker (checkpoints on a volume from before the
  fencing) still counts as committed, older than any claimed run (attempt -1).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

MARKER = "COMMITTED"
LEGACY_MARKER = "COMPLETE"
CLAIMS = "attempts"
_NAME = re.compile(r"^step_(\d{6,})\.a(\d{6,})(?:\.r(\d{3,}))?$")
_LEGACY_NAME = re.compile(r"^step_(\d+)$")
_CLAIM = re.compile(r"^a(\d{6,})(?:\.r(\d{3,}))?$")
LEGACY_FENCE = (-1, 0)


class SupersededError(RuntimeError):
    """A newer run of the job has claimed the checkpoint root: this one may not commit."""


@dataclass(frozen=True)
class StoredCheckpoint:
    step: int
    attempt: int
    run: int
    url: str  # s3://bucket/prefix/step_000010.a000003.r000, or the directory
    files: dict[str, int]  # relative path -> size in bytes (empty for the legacy layout)
    committed: float  # when its marker was written (seconds since the epoch)

    @property
    def fence(self) -> tuple[int, int]:
        return (self.attempt, self.run)

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def hf_url(self) -> str | None:
        return f"{self.url}/hf" if any(name.startswith("hf/") for name in self.files) else None


def checkpoint_name(step: int, attempt: int, run: int) -> str:
    return f"step_{step:06d}.a{attempt:06d}.r{run:03d}"


def claim_name(attempt: int, run: int) -> str:
    return f"a{attempt:06d}.r{run:03d}"


def parse_name(name: str) -> tuple[int, int, int] | None:
    """(step, attempt, run) of a checkpoint directory's name; attempt -1 for the legacy layout."""
    match = _NAME.match(name)
    if match:
        return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)
    legacy = _LEGACY_NAME.match(name)
    return (int(legacy.group(1)), *LEGACY_FENCE) if legacy else None


def parse_claim(name: str) -> tuple[int, int] | None:
    match = _CLAIM.match(name)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


class Backend(Protocol):
    """Where the files are: checkpoint_backends.FileBackend or S3Backend."""

    url: str

    def names(self) -> list[str]: ...  # the top-level directory names under the root

    def claims(self) -> dict[str, float]: ...  # claim name -> when it was made

    def create_claim(self, name: str, body: bytes) -> bool: ...  # False: that name exists

    def read(self, name: str, file: str) -> tuple[bytes, float] | None: ...  # (content, mtime)

    def write_marker(self, name: str, body: bytes) -> float: ...  # its time once in place

    def store_files(self, name: str, local_dir: str) -> dict[str, int]: ...

    def fetch(self, name: str, files: dict[str, int], staging: str) -> str: ...

    def delete(self, name: str) -> None: ...  # the marker first

    def lock(self) -> Any: ...  # a context manager

    def writing_directory(self, name: str, staging: str) -> str: ...


class CheckpointStore:
    """One job's checkpoints, as seen by run `run` of attempt `attempt` (claim() takes the run)."""

    def __init__(self, backend: Backend, attempt: int) -> None:
        self.backend = backend
        self.url = backend.url
        self.attempt = attempt
        self.run = 0
        self.unusable: set[str] = set()  # names this run failed to fetch or load: never kept

    @property
    def fence(self) -> tuple[int, int]:
        return (self.attempt, self.run)

    # ------------------------------------------------------------------ claims

    def claims(self) -> dict[tuple[int, int], float]:
        """(attempt, run) -> when it claimed the root."""
        out = {}
        for name, when in self.backend.claims().items():
            fence = parse_claim(name)
            if fence is not None:
                out[fence] = when
        return out

    def claim(self) -> int:
        """Announce this run (the next number free within the attempt); older runs stop
        committing once they see it. Returns the run."""
        with self.backend.lock():
            taken = [run for attempt, run in self.claims() if attempt == self.attempt]
            run = max(taken) + 1 if taken else 0
            body = json.dumps({"attempt": self.attempt}).encode()
            while not self.backend.create_claim(claim_name(self.attempt, run), body):
                run += 1  # another run of this attempt claimed it in the meantime
        self.run = run
        return run

    def check_current(self) -> None:
        newer = [fence for fence in self.claims() if fence > self.fence]
        if newer:
            attempt, run = max(newer)
            raise SupersededError(
                f"run {run} of attempt {attempt} has taken over {self.url}; run {self.run} of "
                f"attempt {self.attempt} commits nothing more"
            )

    # ------------------------------------------------------------------ reading

    def committed(self) -> list[StoredCheckpoint]:
        """Every valid committed checkpoint, newest first (by step, then fence). A marker written
        after a newer run claimed the root is left out (fencing)."""
        claims = self.claims()
        found = []
        for name in self.backend.names():
            parsed = parse_name(name)
            if parsed is None:
                continue
            step, attempt, run = parsed
            legacy = (attempt, run) == LEGACY_FENCE
            marker = self.backend.read(name, LEGACY_MARKER if legacy else MARKER)
            if marker is None:
                continue  # no marker: a save that never finished
            body, when = marker
            try:
                files = {} if legacy else {str(k): int(v) for k, v in json.loads(body)["files"].items()}
            except Exception as exc:  # a damaged marker: the checkpoint cannot be trusted
                log.warning("ignoring %s: its marker does not read (%s)", name, exc)
                continue
            newer = [t for fence, t in claims.items() if fence > (attempt, run)]
            if newer and when > min(newer):
                log.warning("ignoring %s: committed after a newer run took over", name)
                continue
            url = f"{self.url}/{name}"
            found.append(StoredCheckpoint(step, attempt, run, url, files, when))
        return sorted(found, key=lambda c: (c.step, c.fence), reverse=True)

    def fetch(self, checkpoint: StoredCheckpoint, staging: str) -> str:
        """A local directory with the checkpoint's files; raises OSError when a file is missing or
        its size differs from the marker's."""
        return self.backend.fetch(checkpoint.name, checkpoint.files, staging)

    # ------------------------------------------------------------------ writing

    def directory_for(self, step: int, staging: str) -> str:
        """Where the ranks write the checkpoint of `step` (in place on a volume, else staging)."""
        return self.backend.writing_directory(checkpoint_name(step, self.attempt, self.run), staging)

    def commit(self, step: int, local_dir: str) -> StoredCheckpoint:
        """Store local_dir as the checkpoint of `step` (upload, or fsync in place), then commit it
        (marker last) unless a newer run has claimed the root."""
        name = checkpoint_name(step, self.attempt, self.run)
        files = self.backend.store_files(name, local_dir)
        body = json.dumps(
            {"step": step, "attempt": self.attempt, "run": self.run, "files": files}, sort_keys=True
        ).encode()
        with self.backend.lock():
            self.check_current()
            when = self.backend.write_marker(name, body)
        return StoredCheckpoint(step, self.attempt, self.run, f"{self.url}/{name}", files, when)

    def prune(self, keep: int) -> list[str]:
        """Keep the newest `keep` committed checkpoints that this run did not find unusable; delete
        older ones, unusable ones, fenced-out commits and unfinished saves of this or older runs.
        Returns the deleted names."""
        usable = [c for c in self.committed() if c.name not in self.unusable]
        kept = {c.name for c in usable[:keep]}
        deleted = []
        for name in self.backend.names():
            parsed = parse_name(name)
            if parsed is None or name in kept or parsed[1:] > self.fence:
                continue  # a newer run's directories are its own business
            self.backend.delete(name)
            deleted.append(name)
        return deleted
