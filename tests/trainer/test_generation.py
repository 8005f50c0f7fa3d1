"""The hf generation engine: left padding, stopping at eos, and log-probabilities that agree with
the training forward pass (same positions under left padding, same temperature)."""

from __future__ import annotations

import torch

from rlhf_trainer.api.spec import GenerationSpec
from rlhf_trainer.engine.models import eos_token_ids, load_tokenizer
from rlhf_trainer.generation import (
    GenerationOutput,
    HFGenerationEngine,
    completion_mask,
    left_pad,
    merge_outputs,
)
from rlhf_trainer.roles.forward import policy_forward
from rlhf_trainer.rollout_batch import RolloutBatch


def test_completion_mask_keeps_tokens_up_to_the_first_eos() -> None:
    responses = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 0, 0, 0]])
    assert completion_mask(responses, [2]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_left_pad_truncates_from_the_left() -> None:
    ids, mask = left_pad([[1, 2, 3, 4], [5]], pad_id=0, max_length=3)
    assert ids.tolist() == [[2, 3, 4], [0, 0, 5]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_merge_outputs_repads_prompts_and_completions() -> None:
    a = GenerationOutput(torch.tensor([[1, 2, 9]]), torch.tensor([[1, 1, 1]]), prompt_width=2)
    b = GenerationOutput(torch.tensor([[3, 8, 8]]), torch.tensor([[1, 1, 1]]), prompt_width=1)
    merged = merge_outputs([a, b], pad_id=0)
    assert merged.prompt_width == 2
    assert merged.input_ids.tolist() == [[1, 2, 9, 0], [0, 3, 8, 8]]
    assert merged.attention_mask.tolist() == [[1, 1, 1, 0], [0, 1, 1, 1]]


def test_generation_logprobs_match_the_training_forward(demo_assets: dict[str, str]) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    tokenizer = load_tokenizer(demo_assets["model"])
    model = AutoModelForCausalLM.from_pretrained(demo_assets["model"]).eval()
    spec = GenerationSpec(max_prompt_length=32, max_new_tokens=6, temperature=0.7)
    engine = HFGenerationEngine(
        model, spec, eos_token_ids(tokenizer, model), tokenizer.pad_token_id, torch.device("cpu")
    )
    prompts = tokenizer(["say a", "repeat the letter b", "c"])["input_ids"]
    out = engine.generate(prompts)

    assert out.prompt_width == max(len(p) for p in prompts)
    assert out.input_ids[2, : out.prompt_width - len(prompts[2])].eq(tokenizer.pad_token_id).all()
    assert out.response_ids.shape[1] <= 6
    batch = RolloutBatch.from_generation(out)
    with torch.no_grad():
        logprobs, entropy = policy_forward(model, batch, temperature=0.7, with_entropy=True)
    mask = batch.response_mask
    # Reference: a one-prompt-at-a-time forward without any padding.
    for row in range(len(prompts)):
        n = int(mask[row].sum())
        tokens = torch.tensor(prompts[row] + batch.response_ids[row, :n].tolist()).unsqueeze(0)
        with torch.no_grad():
            logits = model(input_ids=tokens).logits[0, len(prompts[row]) - 1 : -1] / 0.7
        expected = (
            torch.log_softmax(logits, -1).gather(-1, tokens[0, len(prompts[row]) :].unsqueeze(-1)).squeeze(-1)
        )
        torch.testing.assert_close(logprobs[row, :n], expected, atol=1e-5, rtol=1e-5)
    assert entropy is not None and bool((entropy[mask] > 0).all())


def test_merge_outputs_carries_sampling_logprobs_and_empty_parts() -> None:
    a = GenerationOutput(torch.tensor([[1, 2, 9]]), torch.tensor([[1, 1, 1]]), 2, torch.tensor([[-0.5]]))
    b = GenerationOutput(
        torch.tensor([[3, 8, 8]]), torch.tensor([[1, 1, 1]]), 1, torch.tensor([[-1.0, -2.0]])
    )
    empty = GenerationOutput(
        torch.zeros((0, 2), dtype=torch.long), torch.zeros((0, 2), dtype=torch.long), 1, torch.zeros((0, 1))
    )
    merged = merge_outputs([a, empty, b], pad_id=0)
    assert merged.input_ids.tolist() == [[1, 2, 9, 0], [0, 3, 8, 8]]
    assert merged.logprobs is not None and merged.logprobs.tolist() == [[-0.5, 0.0], [-1.0, -2.0]]
    batch = RolloutBatch.from_generation(merged)
    assert batch.rollout_logprobs is merged.logprobs
    assert batch.rows(1, 2).rollout_logprobs.tolist() == [[-1.0, -2.0]]
