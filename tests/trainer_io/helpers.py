"""Helpers of the trainer I/O tests: job specs and a tiny character tokenizer (nothing downloaded)."""

from __future__ import annotations

import copy
from typing import Any

from rlhf_trainer.api.spec import RLHFJobSpec

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

BASE_SPEC: dict[str, Any] = {
    "algorithm": {"name": "grpo", "samplesPerPrompt": 2, "kl": {"coef": 0.0}},
    "models": {
        "actor": {"model": "/models/tiny", "gpus": 0},
        "reward": [{"function": "rlhf_trainer.rewards.builtin:exact_match"}],
        "rollout": {"engine": "hf"},
    },
    "data": {"prompts": {"path": "/data/prompts.jsonl"}},
    "training": {"rolloutBatchSize": 2, "trainBatchSize": 4, "microBatchSize": 2, "maxSteps": 3},
}


def make_spec(rewards: list[dict[str, Any]] | None = None, **overrides: Any) -> RLHFJobSpec:
    wire = copy.deepcopy(BASE_SPEC)
    if rewards is not None:
        wire["models"]["reward"] = rewards
    wire.update(overrides)
    return RLHFJobSpec.model_validate(wire)


def char_tokenizer(chat_template: str | None = None) -> Any:
    """A character-level fast tokenizer: one token per printable ASCII character."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<eos>"]
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {token: i for i, token in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast
