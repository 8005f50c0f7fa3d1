"""Where the trainer-owned status goes: the RLHFJob status subresource, a file, or nowhere."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from ..api.job import GROUP, PLURAL, VERSION
from ..api.status import TRAINER_FIELDS
from .status import should_push

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"


class StatusSink:
    """Receives the whole trainer-owned status each time; decides itself when to write it."""

    def read(self) -> dict[str, Any]:
        """The trainer-owned status stored now (a restarted attempt continues its checkpoint list)."""
        return {}

    def update(self, status: dict[str, Any], force: bool = False) -> None:
        pass

    def flush(self) -> None:
        pass


class NullStatusSink(StatusSink):
    pass


class FileStatusSink(StatusSink):
    """Writes `path` (status.json) on every update; atomically, so readers never see half a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        try:
            with open(self.path) as f:
                stored = json.load(f)
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in stored.items() if k in TRAINER_FIELDS} if isinstance(stored, dict) else {}

    def update(self, status: dict[str, Any], force: bool = False) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(status, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, self.path)


class KubernetesStatusSink(StatusSink):
    """JSON merge patches of the RLHFJob's status subresource, holding only trainer-owned fields.

    At most one patch per `min_interval_s` (status writes wake every watcher of the object),
    except forced ones. A failed patch is logged and retried with the next update: losing a
    status update must never stop training. 403/404 mean the Role or the job is wrong, which
    retrying will not fix, so they are logged loudly once and quietly afterwards.
    """

    def __init__(
        self,
        namespace: str,
        name: str,
        min_interval_s: float = 10.0,
        api_client: Any = None,
        request_timeout_s: float = 10.0,
    ) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.name = name
        self.min_interval_s = min_interval_s
        self.request_timeout_s = request_timeout_s
        self.api = client.CustomObjectsApi(api_client or _default_api_client())
        self._last_push: float | None = None
        self._pending: dict[str, Any] | None = None
        self._reported: set[int] = set()

    @property
    def _target(self) -> str:
        return f"rlhfjobs.{GROUP}/{self.name} status in namespace {self.namespace}"

    def read(self) -> dict[str, Any]:
        try:
            obj = self.api.get_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURAL, self.name, _request_timeout=self.request_timeout_s
            )
        except Exception as exc:
            self._log_failure("reading", exc)
            return {}
        status = obj.get("status") or {}
        return {k: v for k, v in status.items() if k in TRAINER_FIELDS}

    def update(self, status: dict[str, Any], force: bool = False) -> None:
        self._pending = status
        if should_push(time.monotonic(), self._last_push, self.min_interval_s, force):
            self._push()

    def flush(self) -> None:
        if self._pending is not None:
            self._push()

    def _push(self) -> None:
        assert self._pending is not None
        body = {"status": {k: v for k, v in self._pending.items() if k in TRAINER_FIELDS}}
        self._last_push = time.monotonic()
        try:
            # Named explicitly: older clients guessed json-patch+json for custom objects, and a
            # dict body must be a merge patch so operator-owned fields stay untouched.
            self.api.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                self.name,
                body,
                _content_type=MERGE_PATCH,
                _request_timeout=self.request_timeout_s,
            )
        except Exception as exc:
            self._log_failure("patching", exc)
            return
        self._pending = None

    def _log_failure(self, action: str, exc: Exception) -> None:
        status = getattr(exc, "status", None)
        if status in (401, 403, 404):
            hint = {
                401: "the service account token was rejected",
                403: f"the trainer's Role must allow get and patch on rlhfjobs/status for '{self.name}'",
                404: "the RLHFJob (or its CRD) does not exist",
            }[status]
            if status not in self._reported:
                self._reported.add(status)
                log.error("status sink: %s %s failed with HTTP %s: %s", action, self._target, status, hint)
            else:
                log.debug("status sink: %s %s failed with HTTP %s again", action, self._target, status)
            return
        log.warning("status sink: %s %s failed: %s", action, self._target, _short(exc))


def _short(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    status = getattr(exc, "status", None)
    if status is not None:
        return f"HTTP {status} {reason or ''}".strip()
    return f"{type(exc).__name__}: {exc}"


def _default_api_client() -> Any:
    """In a pod: the service account; elsewhere: KUBECONFIG (or ~/.kube/config)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        # KUBECONFIG is read now: the client library reads it once, when it is first imported.
        return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None)
    return client.ApiClient(configuration)
