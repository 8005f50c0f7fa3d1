"""The two places a CheckpointStore (checkpoint_store.py) keeps checkpoints: a directory (a volume
every pod mounts, or the local disk of `rlhf run`) and an S3-compatible bucket (boto3).

On a directory the ranks write a checkpoint in place; committing fsyncs its files, then writes
the marker under a temporary name, fsyncs it and renames it into place. Claims are created with
O_EXCL, and claims and commits hold an flock on attempts/.lock. Times are the files' mtimes.

In a bucket the ranks write to the staging directory first; committing uploads the files, then
puts the marker. Claims are put with If-None-Match (where the store supports conditional writes).
Times are the objects' LastModified. Credentials come from the environment only
(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, set in the pods from spec.checkpoint.s3.secretRef);
nothing here logs or stores them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError

from .api.spec import S3Spec
from .checkpoint_store import CLAIMS, LEGACY_MARKER, MARKER

_MARKERS = (MARKER, LEGACY_MARKER)


def _tree(local_dir: str) -> Iterator[tuple[str, str]]:
    """(path, relative path with /) of every file under local_dir but the markers."""
    for root, _, names in os.walk(local_dir):
        for file_name in sorted(names):
            path = os.path.join(root, file_name)
            relative = os.path.relpath(path, local_dir).replace(os.sep, "/")
            if relative not in _MARKERS and not relative.startswith(MARKER + "."):
                yield path, relative


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_sizes(location: str, directory: str, files: dict[str, int]) -> None:
    for relative, size in files.items():
        path = os.path.join(directory, *relative.split("/"))
        if not os.path.isfile(path):
            raise OSError(f"{location}/{relative}: missing")
        if os.path.getsize(path) != size:
            raise OSError(f"{location}/{relative}: {os.path.getsize(path)} bytes, the marker says {size}")


class FileBackend:
    """Checkpoints in a directory: in a cluster the checkpoint volume every pod mounts."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.url = self.root

    def _claims_dir(self) -> str:
        return os.path.join(self.root, CLAIMS)

    def names(self) -> list[str]:
        if not os.path.isdir(self.root):
            return []
        return [n for n in os.listdir(self.root) if os.path.isdir(os.path.join(self.root, n))]

    def claims(self) -> dict[str, float]:
        directory = self._claims_dir()
        if not os.path.isdir(directory):
            return {}
        out = {}
        for name in os.listdir(directory):
            with contextlib.suppress(FileNotFoundError):
                out[name] = os.stat(os.path.join(directory, name)).st_mtime
        return out

    def create_claim(self, name: str, body: bytes) -> bool:
        os.makedirs(self._claims_dir(), exist_ok=True)
        try:
            fd = os.open(os.path.join(self._claims_dir(), name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_directory(self._claims_dir())
        return True

    def read(self, name: str, file: str) -> tuple[bytes, float] | None:
        path = os.path.join(self.root, name, file)
        try:
            with open(path, "rb") as f:
                return f.read(), os.fstat(f.fileno()).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None

    def store_files(self, name: str, local_dir: str) -> dict[str, int]:
        """The ranks wrote in place: fsync every file and directory, return their sizes."""
        target = os.path.join(self.root, name)
        if os.path.abspath(local_dir) != target:
            raise ValueError(f"{local_dir}: a checkpoint on a volume is written in place, at {target}")
        files = {}
        for path, relative in _tree(target):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                files[relative] = os.fstat(fd).st_size
            finally:
                os.close(fd)
        for root, _, _ in os.walk(target):
            _fsync_directory(root)
        return files

    def write_marker(self, name: str, body: bytes) -> float:
        directory = os.path.join(self.root, name)
        temporary = os.path.join(directory, f"{MARKER}.{os.getpid()}")
        with open(temporary, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temporary, os.path.join(directory, MARKER))
        _fsync_directory(directory)
        return os.stat(os.path.join(directory, MARKER)).st_mtime

    def fetch(self, name: str, files: dict[str, int], staging: str) -> str:
        directory = os.path.join(self.root, name)
        _check_sizes(directory, directory, files)
        return directory

    def delete(self, name: str) -> None:
        directory = os.path.join(self.root, name)
        for marker in _MARKERS:  # first: a half-deleted checkpoint must never look committed
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, marker))
        shutil.rmtree(directory, ignore_errors=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        os.makedirs(self._claims_dir(), exist_ok=True)
        with open(os.path.join(self._claims_dir(), ".lock"), "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def writing_directory(self, name: str, staging: str) -> str:
        return os.path.join(self.root, name)


def split_url(url: str) -> tuple[str, str]:
    """(bucket, prefix without a trailing slash) of s3://bucket/prefix."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


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


class S3Backend:
    """Checkpoints under s3://bucket/prefix."""

    def __init__(self, url: str, client: Any) -> None:
        self.url = url.rstrip("/")
        self.bucket, self.prefix = split_url(url)
        self.client = client

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def names(self) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        found = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key() + "/", Delimiter="/"):
            found += [p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for p in page.get("CommonPrefixes", [])]
        return found

    def claims(self) -> dict[str, float]:
        return {
            obj["Key"].rsplit("/", 1)[-1]: obj["LastModified"].timestamp()
            for obj in self._objects(self._key(CLAIMS) + "/")
        }

    def create_claim(self, name: str, body: bytes) -> bool:
        key = self._key(CLAIMS, name)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            if code not in ("NotImplemented", "501"):
                raise
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body)  # no conditional writes
        return True

    def read(self, name: str, file: str) -> tuple[bytes, float] | None:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self._key(name, file))
        except ClientError:
            return None
        return got["Body"].read(), got["LastModified"].timestamp()

    def store_files(self, name: str, local_dir: str) -> dict[str, int]:
        files = {}
        for path, relative in _tree(local_dir):
            self.client.upload_file(path, self.bucket, self._key(name, relative))
            files[relative] = os.path.getsize(path)
        return files

    def write_marker(self, name: str, body: bytes) -> float:
        key = self._key(name, MARKER)
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
        return self.client.head_object(Bucket=self.bucket, Key=key)["LastModified"].timestamp()

    def fetch(self, name: str, files: dict[str, int], staging: str) -> str:
        shutil.rmtree(os.path.join(staging, "resume"), ignore_errors=True)  # one download at a time
        target = os.path.join(staging, "resume", name)
        location = f"{self.url}/{name}"
        for relative in files:
            path = os.path.join(target, *relative.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                self.client.download_file(self.bucket, self._key(name, relative), path)
            except Exception as exc:
                raise OSError(f"{location}/{relative}: cannot download: {exc}") from exc
        _check_sizes(location, target, files)
        return target

    def delete(self, name: str) -> None:
        prefix = self._key(name) + "/"
        self.client.delete_object(Bucket=self.bucket, Key=prefix + MARKER)  # first
        keys = [obj["Key"] for obj in self._objects(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def writing_directory(self, name: str, staging: str) -> str:
        step = name.split(".", 1)[0]  # staging/step_000010: only one save at a time lives there
        return os.path.join(staging, step)


def open_backend(path: str, s3: S3Spec | None) -> FileBackend | S3Backend:
    if path.startswith("s3://"):
        assert s3 is not None  # validation requires it with an s3:// path
        return S3Backend(path, s3_client(s3))
    return FileBackend(path)
