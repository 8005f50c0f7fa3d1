"""Token log-probabilities and entropies from logits, chunked to bound memory.

A full ``log_softmax`` over [B, T, V] doubles the largest tensor of a step
(V is 150k for Qwen). Instead: gather the chosen token's logit and subtract
``logsumexp`` over the vocabulary, ``log p(y) = l_y - logsumexp(l)``, working
on ``chunk_rows`` rows of the flattened [B*T, V] at a time so the temporary of
logsumexp (and the float32 upcast of bf16 logits) is only one chunk large.
Both functions are differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_CHUNK_ROWS = 1024


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def logprobs_from_logits(
    logits: Tensor, tokens: Tensor, temperature: float = 1.0, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Tensor:
    """``log softmax(logits / temperature)[..., tokens]``, shape of ``tokens``, in float32 or wider.

    ``logits``: [..., V]; ``tokens``: [...] integer ids. Logits are divided by
    the sampling ``temperature`` so the result matches the distribution the
    rollout engine sampled from.
    """
    _check_temperature(temperature)
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(
            f"logits shape {tuple(logits.shape)} does not match tokens shape {tuple(tokens.shape)}"
        )
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)
    flat_tokens = tokens.reshape(-1, 1).long()
    out_dtype = torch.promote_types(logits.dtype, torch.float32)
    pieces = []
    for start in range(0, flat_logits.shape[0], chunk_rows):
        chunk = flat_logits[start : start + chunk_rows].to(out_dtype)
        if temperature != 1.0:
            chunk = chunk / temperature
        chosen = chunk.gather(-1, flat_tokens[start : start + chunk_rows]).squeeze(-1)
        pieces.append(chosen - torch.logsumexp(chunk, dim=-1))
    if not pieces:
        return flat_logits.new_zeros(tokens.shape, dtype=out_dtype)
    return torch.cat(pieces).reshape(tokens.shape)


def entropy_from_logits(
    logits: Tensor, temperature: float = 1.0, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Tensor:
    """Entropy of ``softmax(logits / temperature)`` per position, shape ``logits.shape[:-1]``.

    ``H = logsumexp(l) - sum_v softmax(l)_v * l_v``, which needs no log_softmax copy.
    """
    _check_temperature(temperature)
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)
    out_dtype = torch.promote_types(logits.dtype, torch.float32)
    pieces = []
    for start in range(0, flat_logits.shape[0], chunk_rows):
        chunk = flat_logits[start : start + chunk_rows].to(out_dtype)
        if temperature != 1.0:
            chunk = chunk / temperature
        probs = torch.softmax(chunk, dim=-1)
        pieces.append(torch.logsumexp(chunk, dim=-1) - (probs * chunk).sum(dim=-1))
    if not pieces:
        return flat_logits.new_zeros(logits.shape[:-1], dtype=out_dtype)
    return torch.cat(pieces).reshape(logits.shape[:-1])
