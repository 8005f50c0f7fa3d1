"""The hf engine's sampling loop (generation/decode.py): a prompt encoded once for its samples,
finished samples dropped from the batch, and `generate`'s distribution."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper

from rlhf_trainer.api.spec import GenerationSpec
from rlhf_trainer.generation.base import completion_mask, left_pad
from rlhf_trainer.generation.decode import prompt_runs, sample, warp
from rlhf_trainer.generation.hf import HFGenerationEngine, sampling_config
from rlhf_trainer.roles.forward import policy_forward
from rlhf_trainer.rollout_batch import RolloutBatch


def _model(demo_assets: dict[str, str]):
    return AutoModelForCausalLM.from_pretrained(demo_assets["model"], dtype=torch.float32).eval()


def _prompts(groups: int = 5, samples: int = 4) -> list[list[int]]:
    """Prompts of different lengths, each repeated `samples` times in a row (as a rollout batch)."""
    gen = torch.Generator().manual_seed(3)
    distinct = [torch.randint(4, 40, (3 + 2 * g,), generator=gen).tolist() for g in range(groups)]
    return [p for p in distinct for _ in range(samples)]


def _spec(**fields: object) -> GenerationSpec:
    return GenerationSpec.model_validate({"maxPromptLength": 16, "maxNewTokens": 12} | fields)


def test_prompt_runs() -> None:
    first, run = prompt_runs([[1], [1], [2], [1], [1]])
    assert first == [0, 2, 3] and run.tolist() == [0, 0, 1, 2, 2]


def test_warp_is_generates_temperature_top_k_top_p() -> None:
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    for top_k, top_p in [(0, 1.0), (5, 1.0), (0, 0.8), (7, 0.6), (1, 0.9)]:
        spec = _spec(temperature=0.7, topK=top_k, topP=top_p)
        warpers = LogitsProcessorList(
            ([TopKLogitsWarper(top_k)] if top_k else []) + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])
        )
        expected = warpers(torch.zeros(6, 1, dtype=torch.long), logits / 0.7)
        torch.testing.assert_close(warp(logits, spec), expected, rtol=0, atol=0)


def test_top_k_one_gives_generates_tokens(demo_assets: dict[str, str]) -> None:
    """With one candidate per step sampling is deterministic: the tokens must be generate's."""
    model, prompts, spec = _model(demo_assets), _prompts(), _spec(topK=1)
    eos = [5, 9]
    ids, mask, out = sample(model, prompts, spec, eos, 0, torch.device("cpu"), record_logprobs=False)
    reference = model.generate(
        input_ids=ids, attention_mask=mask, generation_config=sampling_config(spec, eos, 0)
    )[:, ids.shape[1] :]
    reference = reference.masked_fill(completion_mask(reference, eos) == 0, 0)
    assert out.tokens.shape == reference.shape
    assert torch.equal(out.tokens, reference)


def test_recorded_logprobs_are_the_policys_and_finished_samples_stop(demo_assets: dict[str, str]) -> None:
    """Samples end at different steps (five end-of-sequence ids) and are dropped from the cache as
    they end; every token's recorded log-probability must still equal the trainer's forward pass
    over the whole sequence, which it cannot if a cache row belongs to another sample."""
    torch.manual_seed(0)
    model, prompts = _model(demo_assets), _prompts()
    eos = [5, 9, 11, 17, 23]
    engine = HFGenerationEngine(model, _spec(temperature=0.9), eos, 0, torch.device("cpu"))
    engine.record_logprobs = True
    output = engine.generate(prompts)
    lengths = output.response_mask.sum(dim=1)
    assert int(lengths.min()) < int(lengths.max()) == 12  # some ended early, some ran to the end
    batch = RolloutBatch(output.input_ids, output.attention_mask, output.prompt_width)
    with torch.no_grad():
        expected, _ = policy_forward(model, batch, 0.9, False)
    mask = batch.response_mask
    assert output.logprobs is not None
    torch.testing.assert_close(output.logprobs[mask], expected[mask], rtol=1e-5, atol=1e-5)
    assert bool((output.logprobs[~mask] == 0).all())
    # Prompts come back left-padded in the input order.
    ids, _ = left_pad(prompts, 0, 16)
    assert torch.equal(output.input_ids[:, : output.prompt_width], ids)


@pytest.mark.parametrize("chunk", [None, 6])
def test_the_engine_samples_every_prompt(demo_assets: dict[str, str], chunk: int | None) -> None:
    engine = HFGenerationEngine(
        _model(demo_assets), _spec(), [2], 0, torch.device("cpu"), max_batch_size=chunk
    )
    output = engine.generate(_prompts())
    assert output.input_ids.shape[0] == 20 and bool((output.response_mask.sum(dim=1) >= 1).all())
