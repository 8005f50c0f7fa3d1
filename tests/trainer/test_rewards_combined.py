"""A reward model, a remote HTTP reward and a Python function combined in one GRPO run on Ray
(the reward model is its own Ray actor), ZeRO-2 actor, separate rollout engine."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .estimator_checks import check_run, with_checkpoint
from .helpers import manifest

pytestmark = pytest.mark.slow


@pytest.fixture
def reward_server() -> Iterator[tuple[str, list[int]]]:
    """A real HTTP reward server on 127.0.0.1: 0.25 per completion; records request sizes."""
    sizes: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            sizes.append(len(body["completions"]))
            payload = json.dumps({"rewards": [0.25] * len(body["completions"])}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/score", sizes
    server.shutdown()
    server.server_close()


def test_model_url_and_function_rewards_in_one_ray_run(
    demo_assets: dict,
    tiny_rewards: str,
    reward_model_dir: str,
    reward_server: tuple[str, list[int]],
    ray_cluster: None,
    tmp_path: Path,
    output: Path,
) -> None:
    url, sizes = reward_server
    doc = manifest(
        demo_assets["model"],
        demo_assets["prompts"],
        "grpo",
        {
            "models": {
                "actor": {"zeroStage": 2},
                "rollout": {"engine": "hf", "engines": 1},
                "reward": [
                    {"name": "rm", "model": reward_model_dir, "gpus": 0, "weight": 0.5},
                    {"name": "remote", "url": url, "weight": 2.0, "timeoutSeconds": 10},
                    {"name": "fn", "function": "tiny_rewards:varied", "weight": 1.0},
                ],
            },
        },
    )
    rows = check_run(with_checkpoint(doc, tmp_path), output, demo_assets["model"], "ray")
    assert sizes == [4, 4]  # one request per step with all 2 x 2 completions
    for row in rows:
        assert row["reward/remote"] == 0.25
        assert math.isfinite(row["reward/rm"]) and row["reward/rm"] != 0.0
        expected = 0.5 * row["reward/rm"] + 2.0 * 0.25 + 1.0 * row["reward/fn"]
        assert row["reward/mean"] == pytest.approx(expected, abs=1e-6)
