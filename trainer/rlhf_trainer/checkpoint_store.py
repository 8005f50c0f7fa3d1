"""Checkpoints in S3-compatible object storage (`spec.checkpoint.path: s3://bucket/prefix`).

A checkpoint is written by the ranks to the local staging directory (checkpoint.py), then uploaded
here with boto3. Layout under the prefix:

  attempts/a000003                    the claim of attempt 3, written when it starts
  step_000010.a000003/...             the files of the step-10 checkpoint attempt 3 wrote
  step_000010.a000003/COMMITTED       the commit marker, written last: {step, attempt, files: {name: size}}

A prefix without its marker (an upload killed half-way) is never resumed from, and the next commit
of a newer attempt deletes it. Fencing: every attempt writes under its own number, and before it
writes a marker it lists the claims; when a newer attempt has claimed the prefix, it commits
nothing (`SupersededError`). A marker that still slipped in after a newer claim (a race of
milliseconds) is ignored by readers: its LastModified is later than the newer claim's.

Credentials come from the environment only (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, set in the
pods from spec.checkpoint.s3.secretRef); nothing here logs or stores them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from .api.spec import S3Spec

log = logging.getLogger(__name__)

MARKER = "COMMITTED"
CLAIMS = "attempts/"
_COMMITTED_DIR = re.compile(r"^step_(\d{6,})\.a(\d{6,})/$")


class SupersededError(RuntimeError):
    """A newer attempt of the job has claimed the checkpoint prefix: this one may not commit."""


@dataclass(frozen=True)
class StoredCheckpoint:
    step: int
    attempt: int
    url: str  # s3://bucket/prefix/step_000010.a000003
    files: dict[str, int]  # relative path -> size in bytes
    committed: datetime

    @property
    def hf_url(self) -> str | None:
        return f"{self.url}/hf" if any(name.startswith("hf/") for name in self.files) else None


def split_url(url: str) -> tuple[str, str]:
    """(bucket, prefix without a trailing slash) of s3://bucket/prefix."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def checkpoint_name(step: int, attempt: int) -> str:
    return f"step_{step:06d}.a{attempt:06d}"


def s3_client(spec: S3Spec) -> Any:
    """A boto3 client for the store; credentials from the environment (the pods' Secret env)."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": "path" if spec.endpoint else "auto"},
        connect_timeout=10,
        read_timeout=120,
    )
    return boto3.client("s3", endpoint_url=spec.endpoint, region_name=spec.region, config=config)


class ObjectStore:
    """One job's checkpoints under s3://bucket/prefix, as seen by attempt `attempt`."""

    def __init__(self, url: str, client: Any, attempt: int) -> None:
        self.url = url.rstrip("/")
        self.bucket, self.prefix = split_url(url)
        self.client = client
        self.attempt = attempt

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    # ------------------------------------------------------------------ listing

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def _directories(self) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        found = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key() + "/", Delimiter="/"):
            found += [p["Prefix"].rsplit("/", 2)[-2] + "/" for p in page.get("CommonPrefixes", [])]
        return found

    def claims(self) -> dict[int, datetime]:
        """Attempt -> when it claimed the prefix."""
        out = {}
        for obj in self._objects(self._key(CLAIMS)):
            name = obj["Key"].rsplit("/", 1)[-1]
            if re.fullmatch(r"a\d+", name):
                out[int(name[1:])] = obj["LastModified"]
        return out

    def committed(self) -> list[StoredCheckpoint]:
        """Every valid committed checkpoint, newest first (by step, then attempt). Commits of an
        attempt made after a newer attempt claimed the prefix are left out (fencing)."""
        claims = self.claims()
        found = []
        for directory in self._directories():
            match = _COMMITTED_DIR.match(directory)
            if not match:
                continue
            key = self._key(directory + MARKER)
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError:
                continue  # no marker: an upload that never finished
            try:
                files = json.loads(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())[
                    "files"
                ]
            except Exception as exc:  # a damaged marker: the checkpoint cannot be trusted
                log.warning("ignoring %s: its marker does not read (%s)", directory, exc)
                continue
            step, attempt = int(match.group(1)), int(match.group(2))
            newer = [when for other, when in claims.items() if other > attempt]
            if newer and head["LastModified"] > min(newer):
                log.warning("ignoring %s: committed after attempt %d took over", directory, attempt)
                continue
            found.append(
                StoredCheckpoint(
                    step, attempt, f"{self.url}/{directory.rstrip('/')}", files, head["LastModified"]
                )
            )
        return sorted(found, key=lambda c: (c.step, c.attempt), reverse=True)

    # ------------------------------------------------------------------ writing

    def claim(self) -> None:
        """Announce this attempt; older attempts stop committing once they see it."""
        body = json.dumps({"attempt": self.attempt}).encode()
        self.client.put_object(Bucket=self.bucket, Key=self._key(CLAIMS + f"a{self.attempt:06d}"), Body=body)

    def check_current(self) -> None:
        newer = [a for a in self.claims() if a > self.attempt]
        if newer:
            raise SupersededError(
                f"attempt {max(newer)} has taken over {self.url}; attempt {self.attempt} commits nothing more"
            )

    def upload(self, step: int, local_dir: str) -> StoredCheckpoint:
        """Upload local_dir as the checkpoint of `step`, then commit it (marker last)."""
        name = checkpoint_name(step, self.attempt)
        files = {}
        for root, _, names in os.walk(local_dir):
            for file_name in sorted(names):
                path = os.path.join(root, file_name)
                relative = os.path.relpath(path, local_dir).replace(os.sep, "/")
                if relative == MARKER:
                    continue
                self.client.upload_file(path, self.bucket, self._key(name, relative))
                files[relative] = os.path.getsize(path)
        self.check_current()
        marker = json.dumps({"step": step, "attempt": self.attempt, "files": files}, sort_keys=True)
        self.client.put_object(Bucket=self.bucket, Key=self._key(name, MARKER), Body=marker.encode())
        head = self.client.head_object(Bucket=self.bucket, Key=self._key(name, MARKER))
        return StoredCheckpoint(step, self.attempt, f"{self.url}/{name}", files, head["LastModified"])

    def prune(self, keep: int) -> list[str]:
        """Keep the newest `keep` committed checkpoints; delete older ones, fenced-out commits and
        unfinished uploads of this or earlier attempts. Returns the deleted directories."""
        kept = {c.url.rsplit("/", 1)[-1] + "/" for c in self.committed()[:keep]}
        deleted = []
        for directory in self._directories():
            match = _COMMITTED_DIR.match(directory)
            if not match or directory in kept or int(match.group(2)) > self.attempt:
                continue  # a newer attempt's directories are its own business
            self._delete_prefix(self._key(directory))
            deleted.append(directory.rstrip("/"))
        return deleted

    def _delete_prefix(self, prefix: str) -> None:
        # The marker first: a half-deleted checkpoint must never look committed.
        marker = prefix + MARKER
        self.client.delete_object(Bucket=self.bucket, Key=marker)
        keys = [obj["Key"] for obj in self._objects(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    # ------------------------------------------------------------------ reading

    def download(self, checkpoint: StoredCheckpoint, local_root: str) -> str:
        """The checkpoint's files under local_root/<name>; raises OSError when an object is missing
        or its size differs from the marker's."""
        name = checkpoint.url.rsplit("/", 1)[-1]
        shutil.rmtree(os.path.join(local_root, "resume"), ignore_errors=True)  # one download at a time
        target = os.path.join(local_root, "resume", name)
        for relative, size in checkpoint.files.items():
            path = os.path.join(target, *relative.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                self.client.download_file(self.bucket, self._key(name, relative), path)
            except Exception as exc:
                raise OSError(f"{checkpoint.url}/{relative}: cannot download: {exc}") from exc
            if os.path.getsize(path) != size:
                raise OSError(
                    f"{checkpoint.url}/{relative}: {os.path.getsize(path)} bytes, the marker says {size}"
                )
        return target
