"""A reward model: AutoModelForSequenceClassification with one output, read at the last token."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class RewardModelScorer:
    """Loads a reward model and scores full texts (prompt + completion).

    The score is the head's output at the last non-padding token of each text. Batches are right
    padded and the position comes from the attention mask, not from searching for the pad id:
    with pad = eos (the fallback) a text that ends in eos would otherwise be read one token early.
    Texts longer than `max_length` tokens lose their beginning, so the scored end survives.
    """

    def __init__(
        self,
        path: str,
        precision: str = "bf16",
        device: str = "cpu",
        batch_size: int = 8,
        max_length: int | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        if precision not in DTYPES:
            raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
        self.path = path
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ValueError(f"reward model {path}: the tokenizer has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=DTYPES[precision], trust_remote_code=trust_remote_code
        )
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"reward model {path}: num_labels is {self.model.config.num_labels}; a reward model has 1"
            )
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()

    @torch.no_grad()
    def score(self, texts: list[str]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            scores.extend(self._score_batch(texts[start : start + self.batch_size]))
        return scores

    def __call__(self, texts: list[str]) -> list[float]:
        return self.score(texts)

    def _score_batch(self, texts: list[str]) -> list[float]:
        # A chat-templated text already starts with the BOS token; adding another shifts the model.
        bos = self.tokenizer.bos_token
        add_special = not (bos and all(t.startswith(bos) for t in texts))
        batch = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=self.max_length is not None,
            max_length=self.max_length,
            add_special_tokens=add_special,
        ).to(self.device)
        last = batch["attention_mask"].sum(dim=-1) - 1
        values = self._token_values(batch["input_ids"], batch["attention_mask"])
        if values is None:
            # No separate head to apply per token: the model pools itself (at the last non-pad id).
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return logits[:, 0].float().tolist()
        rows = torch.arange(values.shape[0], device=values.device)
        return values[rows, last, 0].float().tolist()

    def _token_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        """Per-token head outputs [batch, seq, 1] for decoder reward models (a `score` head on a
        base model, as Llama, Qwen2, Mistral, Gemma have); None for other architectures."""
        head = getattr(self.model, "score", None)
        backbone = getattr(self.model, getattr(self.model, "base_model_prefix", ""), None)
        if not isinstance(head, torch.nn.Module) or not isinstance(backbone, torch.nn.Module):
            return None
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return head(hidden)
