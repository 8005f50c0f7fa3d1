"""The HTTP reward against a real server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlhf_trainer.engine.device import free_port
from rlhf_trainer.rewards import RewardConfigError, RewardError, build_rewards
from rlhf_trainer.rewards.remote import RemoteReward

from .helpers import make_spec


@dataclass
class Behaviour:
    fail_first: int = 0  # answer 503 to this many requests first
    status: int = 200
    delay_s: float = 0.0
    batches: list[int] = field(default_factory=list)
    requests: int = 0
    rewards_key: str = "rewards"
    drop_last: bool = False
    headers: list[dict[str, str]] = field(default_factory=list)


class RewardServer:
    """Scores each completion by its length; labels are echoed into the score to prove they arrive."""

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        behaviour = self.behaviour

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                behaviour.requests += 1
                behaviour.headers.append(dict(self.headers))
                if behaviour.delay_s:
                    time.sleep(behaviour.delay_s)
                if behaviour.fail_first > 0:
                    behaviour.fail_first -= 1
                    return self._reply(503, {"error": "warming up"})
                if behaviour.status != 200:
                    return self._reply(behaviour.status, {"error": "bad request body"})
                behaviour.batches.append(len(body["completions"]))
                rewards = [
                    len(c) + (lab or 0) for c, lab in zip(body["completions"], body["labels"], strict=True)
                ]
                assert len(body["prompts"]) == len(rewards)
                if behaviour.drop_last:
                    rewards = rewards[:-1]
                self._reply(200, {behaviour.rewards_key: rewards})

            def _reply(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/score"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[RewardServer]:
    srv = RewardServer()
    yield srv
    srv.close()


def test_remote_reward_scores_in_batches(server: RewardServer) -> None:
    source = RemoteReward(server.url, "spec.models.reward[0].url", max_batch=4)
    completions = ["x" * i for i in range(10)]
    rewards = source(["p"] * 10, completions, [1] * 10)
    assert rewards == [i + 1 for i in range(10)]
    assert server.behaviour.batches == [4, 4, 2]


def test_remote_reward_in_a_reward_set_with_weights(server: RewardServer) -> None:
    spec = make_spec(
        [
            {"url": server.url, "weight": 0.5},
            {"name": "fmt", "function": "rlhf_trainer.rewards.builtin:boxed_format", "weight": 2.0},
        ]
    )
    rewards = build_rewards(spec)
    rewards.preflight()
    result = rewards.score(["p", "q"], [r"\boxed{1}", "ab"], [0, 0])
    assert result.per_source == {"127-0-0-1": [9.0, 2.0], "fmt": [1.0, 0.0]}
    assert result.total == [0.5 * 9 + 2.0, 0.5 * 2]


def test_remote_reward_retries_after_503(server: RewardServer) -> None:
    server.behaviour.fail_first = 2
    source = RemoteReward(server.url, "spec.models.reward[0].url", retries=3, backoff_s=0.01)
    assert source(["p"], ["abc"], [None]) == [3]
    assert server.behaviour.requests == 3


def test_remote_reward_gives_up_after_its_retries(server: RewardServer) -> None:
    server.behaviour.fail_first = 10
    source = RemoteReward(server.url, "spec.models.reward[2].url", retries=1, backoff_s=0.01)
    with pytest.raises(RewardError) as err:
        source(["p"], ["abc"], [None])
    assert str(err.value) == (
        f'spec.models.reward[2].url: {server.url} answered HTTP 503: {{"error": "warming up"}} (after 2 attempts)'
    )
    assert server.behaviour.requests == 2


def test_remote_reward_client_error_is_not_retried(server: RewardServer) -> None:
    server.behaviour.status = 400
    source = RemoteReward(server.url, "spec.models.reward[0].url", retries=3, backoff_s=0.01)
    with pytest.raises(RewardError, match="answered HTTP 400: .*bad request body"):
        source(["p"], ["abc"], [None])
    assert server.behaviour.requests == 1


def test_remote_reward_timeout(server: RewardServer) -> None:
    server.behaviour.delay_s = 1.0
    source = RemoteReward(server.url, "spec.models.reward[0].url", timeout_s=0.2, retries=0)
    started = time.monotonic()
    with pytest.raises(RewardError) as err:
        source(["p"], ["abc"], [None])
    assert time.monotonic() - started < 0.9
    assert str(err.value) == (
        f"spec.models.reward[0].url: no answer from {server.url} within 0.2s (timeoutSeconds) (after 1 attempts)"
    )


def test_unreachable_server_fails_preflight_naming_the_field() -> None:
    url = f"http://127.0.0.1:{free_port()}/score"
    rewards = build_rewards(
        make_spec(
            [
                {"function": "rlhf_trainer.rewards.builtin:boxed_format"},
                {"url": url, "retries": 0},
            ]
        )
    )
    with pytest.raises(RewardConfigError) as err:
        rewards.preflight()
    assert str(err.value).startswith(f"spec.models.reward[1].url: {url} unreachable: ")
    assert "refused" in str(err.value)


def test_unreachable_server_while_scoring_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/score"
    source = RemoteReward(url, "spec.models.reward[0].url", retries=1, backoff_s=0.01)
    with pytest.raises(
        RewardError, match=rf"^spec\.models\.reward\[0\]\.url: {url} unreachable: .*after 2 attempts"
    ):
        source(["p"], ["abc"], [None])


def test_answer_without_rewards_list_is_a_clear_error(server: RewardServer) -> None:
    server.behaviour.rewards_key = "scores"
    source = RemoteReward(server.url, "spec.models.reward[0].url")
    with pytest.raises(
        RewardError, match=r'must answer \{"rewards": \[float, ...\]\}, got \{"scores": \[4\]\}'
    ):
        source(["p"], ["abcd"], [None])


def test_answer_with_too_few_rewards_is_caught_by_the_reward_set(server: RewardServer) -> None:
    server.behaviour.drop_last = True
    rewards = build_rewards(make_spec([{"url": server.url}]))
    with pytest.raises(
        RewardError, match=r"^spec\.models\.reward\[0\]\.url \(url .*\): returned 1 rewards for 2"
    ):
        rewards.score(["p", "q"], ["abcd", "ef"], [None, None])


def test_the_credential_header_comes_from_the_env_the_secret_fills(
    server: RewardServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    token = "s3cr3t-" + "x" * 20
    monkeypatch.setenv("RLHF_REWARD_AUTH_1", token)
    spec = make_spec(
        [
            {"function": "rlhf_trainer.rewards.builtin:boxed_format"},
            {"url": server.url, "auth": {"secretKeyRef": {"name": "judge", "key": "token"}}},
            {
                "url": server.url,
                "auth": {
                    "secretKeyRef": {"name": "judge", "key": "raw"},
                    "header": "X-Api-Key",
                    "scheme": "",
                },
            },
        ]
    )
    monkeypatch.setenv("RLHF_REWARD_AUTH_2", "raw-key")
    server.behaviour.fail_first = 1  # a retry is logged: the credential must not be
    rewards = build_rewards(spec, remote_max_batch=8)
    rewards.preflight()
    with caplog.at_level("DEBUG"):
        rewards.score(["p"], ["abc"], [0])
    bearer = [h for h in server.behaviour.headers if "Authorization" in h]
    assert bearer and all(h["Authorization"] == f"Bearer {token}" for h in bearer)
    assert any(h.get("X-Api-Key") == "raw-key" and "Authorization" not in h for h in server.behaviour.headers)
    assert token not in caplog.text and "raw-key" not in caplog.text
    assert token not in spec.model_dump_json()  # the spec (and so the ConfigMap) holds the reference only


def test_a_missing_credential_fails_preflight_naming_the_secret_reference(server: RewardServer) -> None:
    spec = make_spec([{"url": server.url, "auth": {"secretKeyRef": {"name": "judge", "key": "token"}}}])
    rewards = build_rewards(spec)
    with pytest.raises(RewardConfigError) as err:
        rewards.preflight()
    assert str(err.value).startswith(
        "spec.models.reward[0].auth.secretKeyRef: $RLHF_REWARD_AUTH_0 is not set"
    )
    assert server.behaviour.requests == 0
