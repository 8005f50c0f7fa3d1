"""Issue 17: packed (padding-free) passes, token-budget micro batches, stage overlap with bounded
staleness, and the synchronous loop kept bit for bit at maxStaleness 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf_trainer.api.spec import GenerationSpec, RLHFJobSpec
from rlhf_trainer.batch_plan import BatchConfigError, check_token_budget, plan_batches, token_budget_ranges
from rlhf_trainer.engine.models import eos_token_ids, load_tokenizer
from rlhf_trainer.generation import HFGenerationEngine
from rlhf_trainer.packing import enable_packing, pack, packed_policy_forward
from rlhf_trainer.roles.forward import policy_forward
from rlhf_trainer.roles.micro_batches import train_micro_batches
from rlhf_trainer.rollout_batch import RolloutBatch

from .helpers import manifest, metrics, run

GOLDEN = Path(__file__).with_name("sync_loop_metrics.json")
# float32: packing only reorders the same sums (per-sample attention, fewer padded rows).
LOSS_RTOL = 1e-5
GRAD_TOL = 1e-5  # |packed - unpacked| <= GRAD_TOL * max|unpacked| per parameter tensor


def _model(demo_assets: dict[str, str]):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(demo_assets["model"], dtype=torch.float32)


def _padded_batch(
    seed: int = 0, rows: int = 6, prompt: int = 7, response: int = 9, group: int = 1
) -> RolloutBatch:
    """Rows with left-padded prompts and right-padded completions of varied lengths; `group`
    consecutive rows share a prompt (the samples of one prompt, as a rollout batch lays them out)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 40, (rows, prompt + response), generator=gen)
    mask = torch.ones_like(ids)
    for i in range(rows):
        lead = i - i % group
        ids[i, :prompt] = ids[lead, :prompt]
        mask[i, : lead % 4] = 0  # prompt padding
        mask[i, prompt + 1 + (i * 3) % response :] = 0  # >= 1 completion token
    return RolloutBatch(ids * mask, mask, prompt)


def _loss(logprobs: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:
    """A token-mean policy-gradient loss with per-token advantages (all tokens matter)."""
    mask = batch.response_mask
    adv = torch.linspace(-1.0, 1.0, mask.numel()).reshape(mask.shape)
    return -(logprobs * adv * mask).sum() / mask.sum()


def _loss_and_grads(model, forward, batch: RolloutBatch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    logprobs, _ = forward(model, batch, 0.7, False)
    loss = _loss(logprobs, batch)
    loss.backward()
    return float(loss.detach()), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


def test_packed_forward_gives_the_unpacked_loss_and_gradients(demo_assets: dict[str, str]) -> None:
    model = _model(demo_assets)
    batch = _padded_batch()
    loss, grads = _loss_and_grads(model, policy_forward, batch)
    enable_packing(model)
    packed_loss, packed_grads = _loss_and_grads(model, packed_policy_forward, batch)

    assert packed_loss == pytest.approx(loss, rel=LOSS_RTOL)
    assert grads.keys() == packed_grads.keys() and grads
    for name, grad in grads.items():
        tol = GRAD_TOL * float(grad.abs().max())
        assert float((packed_grads[name] - grad).abs().max()) <= tol, name
    # Unpacked calls (generation, other roles) still run ordinary attention after enable_packing.
    with torch.no_grad():
        again, _ = policy_forward(model, batch, 0.7, False)
        first, entropy = packed_policy_forward(model, batch, 0.7, True)
    mask = batch.response_mask
    torch.testing.assert_close(again[mask], first[mask], rtol=1e-5, atol=1e-5)
    assert entropy is not None and bool((entropy[mask] > 0).all()) and bool((first[~mask] == 0).all())


def test_samples_of_a_prompt_share_one_packed_copy_of_it(demo_assets: dict[str, str]) -> None:
    """Groups of 4 samples per prompt (the last group cut to 2): each prompt is packed once and its
    samples attend to that copy; loss and gradients equal the unpacked ones, where every sample
    carries its own prompt."""
    batch = _padded_batch(rows=10, group=4)
    packed = pack(batch, share_prompts=True)
    prompt_tokens = batch.attention_mask[:, : batch.prompt_width].sum(dim=1)
    assert packed.shared == int(prompt_tokens[[1, 2, 3, 5, 6, 7, 9]].sum()) > 0
    assert packed.input_ids.shape[1] == int(batch.attention_mask.sum()) - packed.shared

    model = _model(demo_assets)
    loss, grads = _loss_and_grads(model, policy_forward, batch)
    enable_packing(model)
    packed_loss, packed_grads = _loss_and_grads(model, packed_policy_forward, batch)
    assert packed_loss == pytest.approx(loss, rel=LOSS_RTOL)
    for name, grad in grads.items():
        tol = GRAD_TOL * float(grad.abs().max())
        assert float((packed_grads[name] - grad).abs().max()) <= tol, name


def test_token_budget_micro_batches_add_up_to_the_train_batch_loss(demo_assets: dict[str, str]) -> None:
    assert token_budget_ranges([5, 5, 5, 12, 1, 1], 10) == [(0, 2), (2, 3), (3, 4), (4, 6)]
    model = _model(demo_assets)
    enable_packing(model)
    batch = _padded_batch(rows=8)
    spec = RLHFJobSpec.model_validate(
        manifest("m", "p", overrides={"training": {"rolloutBatchSize": 4, "trainBatchSize": 8}})["spec"]
    )
    plan = plan_batches(spec, 1)
    pieces = list(train_micro_batches(batch, plan, token_budget=30, loss_aggregation="token-mean"))
    assert len(pieces) > 2 and all(share is not None for _, share in pieces)
    assert [share.boundary for _, share in pieces] == [False] * (len(pieces) - 1) + [True]
    assert sum(share.weight for _, share in pieces) == pytest.approx(1.0)
    assert all(int(micro.attention_mask.sum()) <= 30 or micro.size == 1 for micro, _ in pieces)

    loss, grads = _loss_and_grads(model, packed_policy_forward, batch)
    model.zero_grad()
    total = 0.0
    start = 0
    for micro, share in pieces:
        logprobs, _ = packed_policy_forward(model, micro, 0.7, False)
        # The same per-token advantages as the whole batch's loss, cut to this micro batch.
        mask = micro.response_mask
        adv = torch.linspace(-1.0, 1.0, batch.response_mask.numel()).reshape(batch.response_mask.shape)
        adv = adv[start : start + micro.size, : mask.shape[1]]
        part = -(logprobs * adv * mask).sum() / mask.sum()
        (part * share.weight).backward()
        total += float(part.detach()) * share.weight
        start += micro.size
    assert total == pytest.approx(loss, rel=LOSS_RTOL)
    for name, param in model.named_parameters():
        tol = GRAD_TOL * float(grads[name].abs().max())
        assert float((param.grad - grads[name]).abs().max()) <= tol, name


def test_token_budget_needs_packing_and_one_actor_worker() -> None:
    from rlhf_trainer.api.validation import validate_manifest

    _, errors = validate_manifest(
        manifest("m", "p", overrides={"training": {"microBatchTokens": 64, "packing": False}})
    )
    assert any("spec.training.microBatchTokens" in str(e) for e in errors), errors
    spec = RLHFJobSpec.model_validate(
        manifest("m", "p", overrides={"training": {"microBatchTokens": 64}})["spec"]
    )
    with pytest.raises(BatchConfigError, match="spec.training.microBatchTokens"):
        check_token_budget(spec, 2)


def test_hf_engine_records_the_sampling_logprobs(demo_assets: dict[str, str]) -> None:
    torch.manual_seed(0)
    model = _model(demo_assets).eval()
    tokenizer = load_tokenizer(demo_assets["model"])
    spec = GenerationSpec(max_prompt_length=16, max_new_tokens=6, temperature=0.7)
    engine = HFGenerationEngine(
        model, spec, eos_token_ids(tokenizer, model), tokenizer.pad_token_id, torch.device("cpu")
    )
    engine.record_logprobs = True
    out = engine.generate(tokenizer(["say a", "repeat the letter b", "c"])["input_ids"] * 2)
    assert out.logprobs is not None
    batch = RolloutBatch.from_generation(out)
    with torch.no_grad():
        expected, _ = policy_forward(model, batch, 0.7, False)
    mask = batch.response_mask
    torch.testing.assert_close(out.logprobs[mask], expected[mask], atol=1e-5, rtol=1e-5)
    assert bool((out.logprobs[~mask] == 0).all())


def _rollout_engine_job(demo_assets: dict[str, str], training: dict) -> dict:
    return manifest(
        demo_assets["model"],
        demo_assets["prompts"],
        overrides={
            "models": {"rollout": {"engine": "hf", "engines": 1}},
            "training": {"maxSteps": 3, **training},
        },
    )


def _learning_metrics(output: Path) -> list[dict]:
    return [
        {k: v for k, v in row.items() if not k.startswith(("timing/", "perf/")) and k != "time"}
        for row in metrics(output)
    ]


@pytest.mark.usefixtures("tiny_rewards")
def test_staleness_zero_is_the_synchronous_loop_bit_for_bit(
    demo_assets: dict[str, str], tmp_path: Path
) -> None:
    """maxStaleness 0 without packing reproduces, bit for bit, the metrics the synchronous loop
    wrote before issue 17 (commit c747037, this job, this seed); packing changes them only by
    float rounding."""
    golden = json.loads(GOLDEN.read_text())
    assert run(_rollout_engine_job(demo_assets, {"maxStaleness": 0, "packing": False}), tmp_path / "a") == 0
    assert _learning_metrics(tmp_path / "a") == golden
    assert run(_rollout_engine_job(demo_assets, {"maxStaleness": 0}), tmp_path / "b") == 0
    for row, want in zip(_learning_metrics(tmp_path / "b"), golden, strict=True):
        assert row.keys() == want.keys()
        for key, value in want.items():
            assert row[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


@pytest.mark.usefixtures("tiny_rewards")
def test_staleness_one_trains_on_the_previous_policys_samples(
    demo_assets: dict[str, str], tmp_path: Path
) -> None:
    assert run(_rollout_engine_job(demo_assets, {"maxStaleness": 1, "maxSteps": 4}), tmp_path / "out") == 0
    rows = metrics(tmp_path / "out")
    assert [r["rollout/staleness"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
    assert [r["rollout/policy_version"] for r in rows] == [0.0, 0.0, 1.0, 2.0]
    # The correction saw the sampler's log-probabilities: on the first step the same weights (w ~ 1).
    assert rows[0]["rollout/is_weight_mean"] == pytest.approx(1.0, abs=1e-4)
    assert all("rollout/mismatch_kl" in r for r in rows)
    assert rows[-1]["perf/weight_sync_bytes"] > 0


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_rewards", "ray_cluster")
def test_staleness_one_on_ray(demo_assets: dict[str, str], tmp_path: Path) -> None:
    """The Ray backend: generation, weight sync and training are queued calls; the state dict
    goes from the actor to the engine through the object store, not the driver."""
    assert run(_rollout_engine_job(demo_assets, {"maxStaleness": 1}), tmp_path / "out", backend="ray") == 0
    rows = metrics(tmp_path / "out")
    assert [r["rollout/staleness"] for r in rows] == [0.0, 1.0, 1.0]
    assert rows[-1]["perf/weight_sync_bytes"] > 0


def test_overlapped_cpu_roles_split_the_cores_they_were_placed_on() -> None:
    from rlhf_trainer.backends.placement import WorkerPlacement
    from rlhf_trainer.role_groups import role_threads

    half = WorkerPlacement(bundle=0, num_gpus=0.0, num_cpus=1.0)
    assert role_threads(half, 2, plan_cpus=2.0, overlapped=True) == 1
    assert role_threads(half, 16, plan_cpus=2.0, overlapped=True) == 8
    assert role_threads(half, 2, plan_cpus=2.0, overlapped=False) == 2  # roles take turns
    gpu = WorkerPlacement(bundle=0, num_gpus=1.0, num_cpus=1.0)
    assert role_threads(gpu, 0, plan_cpus=2.0, overlapped=True) == 0


@pytest.mark.usefixtures("tiny_rewards")
def test_a_token_budget_job_trains_through_deepspeed(demo_assets: dict[str, str], tmp_path: Path) -> None:
    """Micro batches of one or two samples (12 tokens) with boundaries set by the cut: the
    optimizer steps (a gradient norm is recorded only when it does)."""
    doc = manifest(
        demo_assets["model"], demo_assets["prompts"], overrides={"training": {"microBatchTokens": 12}}
    )
    assert run(doc, tmp_path / "out") == 0
    rows = metrics(tmp_path / "out")
    assert len(rows) == 2 and all(r["actor/grad_norm"] > 0 for r in rows)
