"""Padding-free forward passes: the samples of a micro batch packed into one sequence.

A micro batch of b rows [b, P + R] (prompt left-padded, completion right-padded) becomes one row
[1, T] holding only the real tokens of every sample back to back, T = sum of the samples'
lengths, with position ids restarting at 0 for each sample. Attention stays within a sample:

- `flash_attention_2/3` (GPU, where flash-attn is installed): the model's own variable-length
  kernels, given the cumulative sequence lengths (`cu_seq_lens_q/k`, as HF's packed path takes).
- anything else (CPU, sdpa, eager): the attention function registered here as `rlhf_packed`,
  which runs scaled-dot-product attention per sample (the packed tokens gathered into a
  [samples, heads, longest, dim] view, causal and key-padding masked) and scatters the result
  back. The projections and MLPs, the bulk of the work, run on the T real tokens only.

Only the positions that score a completion token go through the LM head (`logits_to_keep` as an
index), and the log-probabilities come back in the unpacked [b, R] layout, zeros on padding, so
the loss code is the same for both paths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .algorithms import entropy_from_logits, logprobs_from_logits
from .rollout_batch import RolloutBatch

log = logging.getLogger(__name__)

ATTENTION = "rlhf_packed"
VARLEN = ("flash_attention_2", "flash_attention_3")
# Skips HF's mask construction: each layer gets None and the packed attention does the masking.
NO_MASK = {"full_attention": None, "sliding_attention": None}


@dataclass(frozen=True)
class Packed:
    """One micro batch, packed."""

    input_ids: torch.Tensor
    """[1, T] real tokens of every sample, back to back."""
    position_ids: torch.Tensor
    """[1, T] 0..len-1 per sample."""
    cu_seqlens: torch.Tensor
    """[b + 1] int32 offsets of each sample in the packed row."""
    max_length: int
    scored: torch.Tensor
    """[N] packed positions whose logits score a completion token (the position before it)."""
    targets: torch.Tensor
    """[N] the completion tokens scored."""
    response_index: tuple[torch.Tensor, torch.Tensor]
    """(rows, columns) in the [b, R] layout of each scored token, in the order of `scored`."""


def pack(micro: RolloutBatch) -> Packed:
    """The real tokens of `micro` packed into one row (see the module docstring)."""
    mask = micro.attention_mask.bool()
    lengths = mask.sum(dim=1)
    device = micro.input_ids.device
    cu = torch.zeros(micro.size + 1, dtype=torch.int32, device=device)
    cu[1:] = torch.cumsum(lengths, 0)
    ids = micro.input_ids[mask].unsqueeze(0)
    # Position of each real token within its sample (row-major order of the mask = packed order).
    positions = (mask.long().cumsum(dim=1) - 1)[mask].unsqueeze(0)
    # Packed index of each real token, laid out as [b, P + R] (-1 on padding).
    packed_at = torch.full(mask.shape, -1, dtype=torch.long, device=device)
    packed_at[mask] = torch.arange(int(cu[-1]), device=device)
    response_mask = micro.response_mask
    rows, cols = response_mask.nonzero(as_tuple=True)
    at = packed_at[:, micro.prompt_width :][rows, cols]
    return Packed(
        input_ids=ids,
        position_ids=positions,
        cu_seqlens=cu,
        max_length=int(lengths.max()) if micro.size else 0,
        scored=at - 1,
        targets=micro.response_ids[rows, cols],
        response_index=(rows, cols),
    )


def packed_policy_forward(
    model: Callable[..., object], micro: RolloutBatch, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`roles.forward.policy_forward` without padding: log-probabilities [b, R] of the completion
    tokens (zeros on padding), and optionally their entropy."""
    packed = pack(micro)
    output = model(
        input_ids=packed.input_ids,
        position_ids=packed.position_ids,
        attention_mask=NO_MASK,
        use_cache=False,
        logits_to_keep=packed.scored,
        cu_seq_lens_q=packed.cu_seqlens,
        cu_seq_lens_k=packed.cu_seqlens,
        max_length_q=packed.max_length,
        max_length_k=packed.max_length,
    )
    logits = output.logits[0]  # [N, V]
    flat = logprobs_from_logits(logits.unsqueeze(0), packed.targets.unsqueeze(0), temperature=temperature)[0]
    shape = (micro.size, micro.response_width)
    logprobs = flat.new_zeros(shape).index_put(packed.response_index, flat)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            ent = entropy_from_logits(logits.detach().unsqueeze(0), temperature=temperature)[0]
            entropy = ent.new_zeros(shape).index_put(packed.response_index, ent)
    return logprobs, entropy


def enable_packing(model: torch.nn.Module) -> bool:
    """Let `model` run packed micro batches: variable-length flash attention where the model
    already uses it, else the per-sample `rlhf_packed` attention (which runs ordinary sdpa for
    unpacked calls, e.g. generation). False (the model runs unpacked) for a model whose attention
    is not pluggable (transformers' `_supports_attention_backend`)."""
    config = getattr(model, "config", None)
    if config is None or not getattr(model, "_supports_attention_backend", False):
        log.warning("%s: attention is not pluggable, micro batches run unpacked", type(model).__name__)
        return False
    register_attention()
    if getattr(config, "_attn_implementation", None) not in VARLEN:
        model.set_attn_implementation(ATTENTION)
    return True


def register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, packed_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """Attention within each packed sample ([1, heads, T, dim] in, [1, T, heads, dim] out, as HF's
    attention functions); an unpacked call (no `cu_seq_lens_q`) is HF's sdpa attention."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    assert isinstance(cu, torch.Tensor) and query.shape[0] == 1
    starts, lengths = cu[:-1].long(), (cu[1:] - cu[:-1]).long()
    longest = int(kwargs.get("max_length_q") or int(lengths.max()))
    offsets = torch.arange(longest, device=query.device)
    valid = offsets.unsqueeze(0) < lengths.unsqueeze(1)  # [n, L]
    # Padded slots read token 0 (masked out as keys, dropped as queries).
    index = torch.where(valid, starts.unsqueeze(1) + offsets, torch.zeros_like(offsets))

    def gather(x: torch.Tensor) -> torch.Tensor:  # [1, h, T, d] -> [n, h, L, d]
        return x[0][:, index].transpose(0, 1)

    q, k, v = gather(query), gather(key), gather(value)
    causal = torch.ones(longest, longest, dtype=torch.bool, device=query.device).tril()
    mask = (causal.unsqueeze(0) & valid.unsqueeze(1)).unsqueeze(1)  # [n, 1, L, L]; key 0 always valid
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        dropout_p=dropout if module.training else 0.0,
        scale=scaling,
        enable_gqa=k.shape[1] != q.shape[1],
    )  # [n, h, L, d]
    out = out.transpose(1, 2)[valid]  # [T, h, d] in packed order
    return out.unsqueeze(0), None
