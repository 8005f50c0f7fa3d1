"""Loading the models and the tokenizer a role holds."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..api.spec import RoleSpec
from .config import effective_precision

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_cpu_precision_logged: set[str] = set()


def model_dtype(role: RoleSpec, use_gpu: bool, field: str) -> torch.dtype:
    precision = effective_precision(role, use_gpu)
    if precision != role.precision and field not in _cpu_precision_logged:
        _cpu_precision_logged.add(field)
        log.info(
            "%s.precision: %s is honoured on GPUs only; this role runs on CPU in fp32", field, role.precision
        )
    return DTYPES[precision]


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer, left-padding, with a pad token (the eos token when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {path}: has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def eos_token_ids(tokenizer: Any, model: torch.nn.Module) -> list[int]:
    """End-of-sequence ids of the tokenizer and of the model's generation config (chat models
    often end turns with a token other than the tokenizer's eos)."""
    return _eos_ids(tokenizer, getattr(model, "generation_config", None))


def eos_token_ids_at(tokenizer: Any, model_path: str) -> list[int]:
    """eos_token_ids without loading the model: from its generation_config.json, if it has one."""
    from transformers import GenerationConfig

    try:
        generation_config = GenerationConfig.from_pretrained(model_path)
    except OSError:
        generation_config = None
    return _eos_ids(tokenizer, generation_config)


def _eos_ids(tokenizer: Any, generation_config: Any) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config names an eos token")
    return sorted(ids)


def load_causal_lm(role: RoleSpec, use_gpu: bool, field: str, trainable: bool) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        role.model,
        dtype=model_dtype(role, use_gpu, field),
        attn_implementation=role.attn_implementation,
        trust_remote_code=role.trust_remote_code,
    )
    _prepare(model, role, trainable)
    return model


def _prepare(model: torch.nn.Module, role: RoleSpec, trainable: bool) -> None:
    if trainable and role.gradient_checkpointing:
        # Non-reentrant checkpointing works with inputs that need no gradient (frozen embeddings).
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not trainable:
        model.requires_grad_(False)
        model.eval()


class ValueModel(torch.nn.Module):
    """A critic: the policy's transformer body with a scalar head on every position."""

    def __init__(self, body: torch.nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.body = body
        self.value_head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.normal_(self.value_head.weight, std=1.0 / (hidden_size + 1))
        torch.nn.init.zeros_(self.value_head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.body(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return self.value_head(hidden).squeeze(-1)


def load_value_model(role: RoleSpec, use_gpu: bool, field: str) -> ValueModel:
    from transformers import AutoConfig, AutoModel

    dtype = model_dtype(role, use_gpu, field)
    body = AutoModel.from_pretrained(
        role.model,
        dtype=dtype,
        attn_implementation=role.attn_implementation,
        trust_remote_code=role.trust_remote_code,
    )
    _prepare(body, role, trainable=True)
    config = AutoConfig.from_pretrained(role.model, trust_remote_code=role.trust_remote_code)
    hidden = config.get_text_config().hidden_size
    return ValueModel(body, hidden).to(dtype)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens, as generate() assigns them under left padding."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp_min(0)
