"""Padding-free forward passes: the samples of a micro batch packed into one sequence.

A micro batch of b rows [b, P + R] (prompt left-padded, completion right-padded) becomes one row
[1, T] holding only the real tokens of every sample back to back, T = sum of the samples'
lengths, with position ids restarting at 0 for each sample. Attention stays within a sample:

- `flash_attention_2/3` (GPU, where flash-attn is installed): the model's own variable-length
  kernels, given the cumulative sequence lengths (`cu_seq_lens_q/k`, as HF's packed path takes).
- anything else (CPU, sdpa, eager): the attention function registered here as `rlhf_packed`,
  which runs scaled-dot-product attention per sample (the packed tokens gathered into a
  [samples, heads, longest, dim] view, causal and key-padding masked) and returns the result in
  packed order. The projections and MLPs, the bulk of the work, run on the T real tokens only.

With `share_prompts` (the `rlhf_packed` path), consecutive samples of one prompt carry it once:
[prompt, completion 1, completion 2, ...], each completion continuing the prompt's positions and
attending to the prompt and itself (`Views`), so the prompt's projections and MLPs run once for
the group; the gradients its samples send back through the shared activations add up as over
separate copies.

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
# The keyword the packed row's `Views` travel under, from the model call to the attention function.
VIEWS = "rlhf_views"


@dataclass(frozen=True)
class Views:
    """Attention of a packed row as one view per sample: sample r's queries `query[r, :q_len[r]]`
    attend, causally, to its keys `key[r, :k_len[r]]`, its queries being the last q_len of its keys
    (query i sees keys 0 .. k_len - q_len + i). Every packed token is a query of exactly one view,
    and the views' queries, row after row, are the packed order. Without sharing a sample's queries
    are its keys; with a shared prompt the first sample of a group queries the prompt and its
    completion, the others only their completions, and every sample's keys are the prompt and its
    own completion."""

    query: torch.Tensor  # [b, Lq] packed indices (0 past q_len)
    key: torch.Tensor  # [b, Lk] packed indices (0 past k_len)
    q_len: torch.Tensor  # [b]
    k_len: torch.Tensor  # [b]

    def mask(self) -> torch.Tensor:
        """[b, 1, Lq, Lk] keys each query may see."""
        lq, lk = self.query.shape[1], self.key.shape[1]
        device = self.query.device
        i = torch.arange(lq, device=device).view(1, lq, 1)
        j = torch.arange(lk, device=device).view(1, 1, lk)
        offset = (self.k_len - self.q_len).view(-1, 1, 1)
        return ((j <= offset + i) & (j < self.k_len.view(-1, 1, 1))).unsqueeze(1)

    def valid_queries(self) -> torch.Tensor:
        """[b, Lq] the real query slots."""
        return torch.arange(self.query.shape[1], device=self.query.device) < self.q_len.unsqueeze(1)


@dataclass(frozen=True)
class Packed:
    """One micro batch, packed."""

    input_ids: torch.Tensor
    """[1, T] real tokens of every sample, back to back (a shared prompt once per group)."""
    position_ids: torch.Tensor
    """[1, T] 0..len-1 per sample (a completion continues its prompt's positions)."""
    cu_seqlens: torch.Tensor
    """[b + 1] int32 offsets of each sample in the packed row (the varlen kernels' input; with
    shared prompts a sample after the first of its group holds only its completion)."""
    max_length: int
    scored: torch.Tensor
    """[N] packed positions whose logits score a completion token (the position before it)."""
    targets: torch.Tensor
    """[N] the completion tokens scored."""
    response_index: tuple[torch.Tensor, torch.Tensor]
    """(rows, columns) in the [b, R] layout of each scored token, in the order of `scored`."""
    views: Views
    """What each packed token attends to (the `rlhf_packed` attention)."""
    shared: int
    """Prompt tokens packed once for a group instead of once per sample."""


def prompt_groups(micro: RolloutBatch) -> torch.Tensor:
    """[b] bool: row i starts a group (its prompt differs from row i - 1's). The samples of a prompt
    are contiguous in a rollout batch, so a group is a run of rows with one prompt."""
    prompt_ids = micro.input_ids[:, : micro.prompt_width]
    prompt_mask = micro.attention_mask[:, : micro.prompt_width]
    starts = torch.ones(micro.size, dtype=torch.bool, device=micro.input_ids.device)
    if micro.size > 1:
        same = (prompt_ids[1:] == prompt_ids[:-1]).all(1) & (prompt_mask[1:] == prompt_mask[:-1]).all(1)
        starts[1:] = ~same
    return starts


def pack(micro: RolloutBatch, share_prompts: bool = False) -> Packed:
    """The real tokens of `micro` packed into one row (see the module docstring); with
    `share_prompts`, a prompt repeated by consecutive rows is packed once for all of them."""
    mask = micro.attention_mask.bool()
    device = micro.input_ids.device
    width = micro.prompt_width
    leads = prompt_groups(micro) if share_prompts else torch.ones(micro.size, dtype=torch.bool, device=device)
    leader = torch.cumsum(leads.long(), 0) - 1  # group number of each row
    leader_row = torch.nonzero(leads).squeeze(1)[leader]  # the row that packs the group's prompt
    keep = mask.clone()
    keep[:, :width] &= leads.unsqueeze(1)
    total = int(keep.sum())
    ids = micro.input_ids[keep].unsqueeze(0)
    # Position of each real token within its sample (row-major order of `keep` = packed order).
    positions = (mask.long().cumsum(dim=1) - 1)[keep].unsqueeze(0)
    # Packed index of each real token, laid out as [b, P + R] (-1 on padding); a shared prompt's
    # tokens point at the group's one copy.
    packed_at = torch.full(mask.shape, -1, dtype=torch.long, device=device)
    packed_at[keep] = torch.arange(total, device=device)
    packed_at[:, :width] = packed_at[leader_row, :width]
    lengths = mask.sum(dim=1)
    prompt_lengths = mask[:, :width].sum(dim=1)
    rows, cols = micro.response_mask.nonzero(as_tuple=True)
    # The position before completion token c is column P + c - 1 (a prompt ends at column P - 1).
    scored = packed_at[rows, width + cols - 1]
    views = _views(packed_at, lengths, width - prompt_lengths, torch.where(leads, 0, prompt_lengths))
    sample_lengths = torch.where(leads, lengths, lengths - prompt_lengths)
    cu = torch.zeros(micro.size + 1, dtype=torch.int32, device=device)
    cu[1:] = torch.cumsum(sample_lengths, 0)
    return Packed(
        input_ids=ids,
        position_ids=positions,
        cu_seqlens=cu,
        max_length=int(lengths.max()) if micro.size else 0,
        scored=scored,
        targets=micro.response_ids[rows, cols],
        response_index=(rows, cols),
        views=views,
        shared=int(mask.sum()) - total,
    )


def _views(packed_at: torch.Tensor, lengths: torch.Tensor, first: torch.Tensor, skip: torch.Tensor) -> Views:
    """One view per row: keys are the row's real tokens (from column `first`), queries all but the
    first `skip` of them."""
    device = packed_at.device
    longest = int(lengths.max()) if lengths.numel() else 0
    offsets = torch.arange(longest, device=device)
    columns = (first.unsqueeze(1) + offsets).clamp(max=packed_at.shape[1] - 1)
    key = torch.where(offsets < lengths.unsqueeze(1), packed_at.gather(1, columns), 0)
    q_len = lengths - skip
    q_cols = (skip.unsqueeze(1) + offsets[: int(q_len.max()) if q_len.numel() else 0]).clamp(
        max=max(longest - 1, 0)
    )
    query = key.gather(1, q_cols) if longest else key
    query = torch.where(offsets[: query.shape[1]] < q_len.unsqueeze(1), query, 0)
    return Views(query=query, key=key, q_len=q_len, k_len=lengths)


def packed_policy_forward(
    model: Callable[..., object], micro: RolloutBatch, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`roles.forward.policy_forward` without padding: log-probabilities [b, R] of the completion
    tokens (zeros on padding), and optionally their entropy. Under the `rlhf_packed` attention the
    samples of a prompt share one copy of it; the model's variable-length kernels cannot express
    that, so there every sample carries its own."""
    varlen = attention_of(model) in VARLEN
    packed = pack(micro, share_prompts=not varlen)
    lengths = dict(
        cu_seq_lens_q=packed.cu_seqlens,
        cu_seq_lens_k=packed.cu_seqlens,
        max_length_q=packed.max_length,
        max_length_k=packed.max_length,
    )
    output = model(
        input_ids=packed.input_ids,
        position_ids=packed.position_ids,
        attention_mask=NO_MASK,
        use_cache=False,
        logits_to_keep=packed.scored,
        **(lengths if varlen else {VIEWS: packed.views}),
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


def attention_of(model: object) -> str | None:
    """The attention implementation of `model` (a DeepSpeed engine's module's, for an engine)."""
    inner = getattr(model, "module", model)
    return getattr(getattr(inner, "config", None), "_attn_implementation", None)


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
    views = kwargs.get(VIEWS)
    if views is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    assert isinstance(views, Views) and query.shape[0] == 1

    def gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # [1, h, T, d] -> [n, h, L, d]
        # index_select: its backward is a scatter-add, far cheaper than advanced indexing's.
        picked = x[0].index_select(1, index.reshape(-1))
        return picked.view(x.shape[1], *index.shape, x.shape[3]).transpose(0, 1)

    out = F.scaled_dot_product_attention(
        gather(query, views.query),
        gather(key, views.key),
        gather(value, views.key),
        attn_mask=views.mask(),
        dropout_p=dropout if module.training else 0.0,
        scale=scaling,
        enable_gqa=key.shape[1] != query.shape[1],
    )  # [n, h, Lq, d]
    slots = views.valid_queries().reshape(-1).nonzero().squeeze(1)
    out = out.transpose(1, 2).reshape(-1, *out.shape[1:2], out.shape[3])
    out = out.index_select(0, slots)  # [T, h, d] in packed order
    return out.unsqueeze(0), None
