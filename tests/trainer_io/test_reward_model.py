"""The reward-model scorer on a tiny randomly initialised Llama built locally.

Llama rather than Qwen2: transformers 5 maps model_type qwen2 to Qwen2Tokenizer in AutoTokenizer,
which rebuilds a byte-level pre-tokenizer over the saved vocabulary and drops the character
tokenizer's spaces; for llama it loads tokenizer.json as saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from rlhf_trainer.rewards import RewardConfigError, build_rewards
from rlhf_trainer.rewards.model import RewardModelScorer

from .helpers import char_tokenizer, make_spec


def save_tiny_reward_model(directory: Path, with_pad: bool = True, num_labels: int = 1) -> Path:
    tokenizer = char_tokenizer()
    if not with_pad:
        tokenizer.pad_token = None
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForSequenceClassification(config)
    # A random head on a random model gives scores near 0; scale them so differences are visible.
    with torch.no_grad():
        model.score.weight.mul_(50)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def manual_scores(path: Path, texts: list[str]) -> list[float]:
    """One text at a time, no padding: the classification head's output at the last token."""
    model = LlamaForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = char_tokenizer()
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            out.append(model(input_ids=ids).logits[0, 0].item())
    return out


TEXTS = ["a", "hello world", "the quick brown fox", "xy", "1+1=2"]


def test_score_is_the_logit_at_the_last_non_pad_token(tmp_path: Path) -> None:
    path = save_tiny_reward_model(tmp_path / "rm")
    scorer = RewardModelScorer(str(path), precision="fp32", device="cpu", batch_size=3)
    scores = scorer.score(TEXTS)
    expected = manual_scores(path, TEXTS)
    assert scores == pytest.approx(expected, abs=1e-4)
    assert len(set(round(s, 3) for s in scores)) == len(TEXTS)  # the texts really score differently


def test_pad_falls_back_to_eos_and_a_text_ending_in_eos_is_read_at_its_end(tmp_path: Path) -> None:
    path = save_tiny_reward_model(tmp_path / "rm", with_pad=False)
    scorer = RewardModelScorer(str(path), precision="fp32", device="cpu", batch_size=8)
    assert scorer.tokenizer.pad_token == "<eos>"
    texts = ["short<eos>", "a much longer text<eos>"]
    assert scorer.score(texts) == pytest.approx(manual_scores(path, texts), abs=1e-4)


def test_reward_model_with_several_labels_is_refused(tmp_path: Path) -> None:
    path = save_tiny_reward_model(tmp_path / "rm", num_labels=2)
    with pytest.raises(ValueError, match="num_labels is 2; a reward model has 1"):
        RewardModelScorer(str(path), precision="fp32", device="cpu")


def test_reward_set_loads_a_model_in_process_and_scores_prompt_plus_completion(tmp_path: Path) -> None:
    path = save_tiny_reward_model(tmp_path / "rm")
    rewards = build_rewards(make_spec([{"model": str(path), "gpus": 0, "weight": 2.0}]), device="cpu")
    rewards.preflight()
    result = rewards.score(["hello ", "the quick "], ["world", "brown fox"], [None, None])
    expected = manual_scores(path, ["hello world", "the quick brown fox"])
    assert result.per_source["rm"] == pytest.approx(expected, abs=1e-4)
    assert result.total == pytest.approx([2 * e for e in expected], abs=1e-4)


def test_reward_set_uses_an_injected_scorer() -> None:
    seen: list[list[str]] = []

    def scorer(texts: list[str]) -> Any:
        seen.append(texts)
        return torch.tensor([float(len(t)) for t in texts])

    rewards = build_rewards(make_spec([{"model": "/models/not-here"}]), model_scorers={0: scorer})
    rewards.preflight()  # nothing to load: the role holds the model
    assert rewards.score(["ab", "c"], ["cd", "de"]).total == [4.0, 3.0]
    assert seen == [["abcd", "cde"]]


def test_missing_reward_model_fails_preflight_naming_the_field(tmp_path: Path) -> None:
    rewards = build_rewards(
        make_spec(
            [
                {"function": "rlhf_trainer.rewards.builtin:boxed_format"},
                {"model": str(tmp_path / "absent")},
            ]
        ),
        device="cpu",
    )
    with pytest.raises(
        RewardConfigError, match=r"^spec\.models\.reward\[1\]\.model: cannot load reward model '"
    ):
        rewards.preflight()
