"""Token tensors of offline examples: right-padded prompt + target, with a mask on the target.

Lengths follow spec.generation: the prompt keeps its last maxPromptLength tokens, the target its
first maxNewTokens. Causal-LM targets end with the eos token (the model learns to stop); reward-model
texts are tokenized as the `reward` role scores them (rewards/model.py): prompt + response as one
text, a BOS added unless the text starts with it, cut from the left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Encoded:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_mask: torch.Tensor
    """True on the tokens the loss is taken on (aligned with input_ids)."""

    def to(self, device: torch.device) -> Encoded:
        return Encoded(self.input_ids.to(device), self.attention_mask.to(device), self.target_mask.to(device))


def _pad(rows: list[tuple[list[int], int]], pad_id: int) -> Encoded:
    """rows: (ids, prompt length); right padding."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (ids, prompt_len) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[i, : len(ids)] = 1
        target[i, prompt_len : len(ids)] = True
    return Encoded(input_ids, attention, target)


def encode_completions(
    tokenizer: Any,
    prompts: list[str],
    targets: list[str],
    add_special_tokens: bool,
    max_prompt: int,
    max_target: int,
) -> Encoded:
    """prompt + target + eos for a causal LM; the mask covers target and eos."""
    rows = []
    for prompt, target in zip(prompts, targets, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"][-max_prompt:]
        target_ids = tokenizer(target, add_special_tokens=False)["input_ids"][:max_target]
        rows.append((prompt_ids + target_ids + [tokenizer.eos_token_id], len(prompt_ids)))
    return _pad(rows, tokenizer.pad_token_id)


def encode_scored_texts(tokenizer: Any, texts: list[str], max_length: int) -> Encoded:
    """Whole texts as the reward role scores them; the mask marks each row's last token."""
    bos = tokenizer.bos_token
    add_special = not (bos and all(t.startswith(bos) for t in texts))
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=add_special)["input_ids"][-max_length:]
        rows.append((ids, len(ids) - 1))
    return _pad(rows, tokenizer.pad_token_id)
