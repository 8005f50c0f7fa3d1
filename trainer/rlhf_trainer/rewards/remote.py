"""A reward served over HTTP: POST {"prompts", "completions", "labels"} -> {"rewards": [float]}."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import requests

from ..api.spec import RewardAuth
from .errors import RewardConfigError, RewardError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 3
DEFAULT_MAX_BATCH = 256
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class RemoteReward:
    """Scores in requests of at most `max_batch` samples.

    Connection errors, timeouts, 429 and 5xx are retried `retries` times with exponential
    backoff (backoff_s, 2 x backoff_s, ... capped at 30 s); any other 4xx fails at once, since
    resending the same body cannot fix it.
    """

    def __init__(
        self,
        url: str,
        field: str,
        timeout_s: float | None = None,
        retries: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        backoff_s: float = 1.0,
        auth: RewardAuth | None = None,
        auth_env: str | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if (auth is None) != (auth_env is None):
            raise ValueError("auth and auth_env go together")
        self.auth = auth
        self.auth_env = auth_env
        self.url = url
        self.field = field
        self.timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
        self.retries = DEFAULT_RETRIES if retries is None else retries
        self.max_batch = max_batch
        self.backoff_s = backoff_s
        self._session = requests.Session()

    def _headers(self) -> dict[str, str]:
        """The credential header, read from the env the operator fills from the Secret (never logged)."""
        if self.auth is None:
            return {}
        secret = os.environ.get(self.auth_env or "")
        if not secret:
            raise RewardConfigError(
                f"{self.field.removesuffix('.url')}.auth.secretKeyRef: ${self.auth_env} is not set (the operator "
                f"sets it from Secret {self.auth.secret_key_ref.name!r} key {self.auth.secret_key_ref.key!r}; "
                "set it yourself for `rlhf run`)"
            )
        value = f"{self.auth.scheme} {secret.strip()}" if self.auth.scheme else secret.strip()
        return {self.auth.header: value}

    def preflight(self) -> None:
        """A TCP connect to the server: proves it is reachable without spending a scoring call."""
        self._headers()
        parts = urlsplit(self.url)
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if not host:
            raise RewardConfigError(f"{self.field}: '{self.url}' has no host")
        try:
            with socket.create_connection((host, port), timeout=min(self.timeout_s, 10.0)):
                pass
        except OSError as exc:
            raise RewardConfigError(f"{self.field}: {self.url} unreachable: {exc}") from exc

    def __call__(self, prompts: list[str], completions: list[str], labels: list[Any]) -> list[float]:
        rewards: list[float] = []
        for start in range(0, len(completions), self.max_batch):
            end = start + self.max_batch
            rewards.extend(self._post(prompts[start:end], completions[start:end], labels[start:end]))
        return rewards

    def _post(self, prompts: list[str], completions: list[str], labels: list[Any]) -> Sequence[float]:
        body = {"prompts": prompts, "completions": completions, "labels": labels}
        headers = self._headers()
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.backoff_s * 2 ** (attempt - 1), 30.0)
                log.warning(
                    "%s: %s; retry %d/%d in %.1fs", self.field, last_error, attempt, self.retries, delay
                )
                time.sleep(delay)
            try:
                response = self._session.post(self.url, json=body, headers=headers, timeout=self.timeout_s)
            except requests.Timeout:
                last_error = f"no answer from {self.url} within {self.timeout_s:g}s (timeoutSeconds)"
                continue
            except requests.ConnectionError as exc:
                last_error = f"{self.url} unreachable: {exc}"
                continue
            if response.status_code in _RETRY_STATUS:
                last_error = f"{self.url} answered HTTP {response.status_code}: {_snippet(response)}"
                continue
            if response.status_code >= 400:
                raise RewardError(
                    f"{self.field}: {self.url} answered HTTP {response.status_code}: {_snippet(response)}"
                )
            return self._parse(response)
        raise RewardError(f"{self.field}: {last_error} (after {self.retries + 1} attempts)")

    def _parse(self, response: requests.Response) -> Sequence[float]:
        try:
            payload = response.json()
        except ValueError as exc:
            raise RewardError(f"{self.field}: {self.url} did not answer JSON: {_snippet(response)}") from exc
        if not isinstance(payload, dict) or not isinstance(payload.get("rewards"), list):
            raise RewardError(
                f'{self.field}: {self.url} must answer {{"rewards": [float, ...]}}, got {_snippet(response)}'
            )
        return payload["rewards"]

    def describe(self) -> str:
        return f"url {self.url}"


def _snippet(response: requests.Response, limit: int = 200) -> str:
    text = response.text.strip().replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
