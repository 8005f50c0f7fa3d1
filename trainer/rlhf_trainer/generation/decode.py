"""The `hf` engine's sampling loop: a KV-cached decoder that does less work than `generate` for
the batches RL samples.

- **A prompt is encoded once for all of its samples.** A rollout batch repeats each prompt
  `samplesPerPrompt` times in a row; the prefill runs on the distinct prompts and their cache rows
  are then copied to every sample (`DynamicCache.batch_select_indices`).
- **Finished samples leave the batch.** A sample that has sampled an end-of-sequence token is
  dropped from the cache and from every later forward pass, so a step costs what the still-running
  samples cost, not the whole batch (`generate` keeps every row to the end and pads it).
- The distribution is `generate`'s for the knobs `sampling_config` sets: logits / temperature, then
  top-k, then top-p (nucleus, at least one token kept), sampled with `torch.multinomial` from torch's
  global generator (seeded by the trainer like everything else).

With `record_logprobs`, each sampled token's log-probability under log_softmax(logits /
temperature), the trainer's own distribution (before top-k/top-p), comes back too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..api.spec import GenerationSpec
from ..engine.models import position_ids_from_mask
from .base import left_pad


@dataclass(frozen=True)
class Sampled:
    tokens: torch.Tensor
    """[B, R] the sampled tokens (pad after a sample's end-of-sequence token), R = longest sample."""
    logprobs: torch.Tensor | None
    """[B, R] each token's log-probability (see the module docstring), 0 on padding."""


def prompt_runs(prompts: list[list[int]]) -> tuple[list[int], torch.Tensor]:
    """The first row of each run of equal consecutive prompts, and each row's run:
    [[1], [1], [2]] -> ([0, 2], [0, 0, 1])."""
    first: list[int] = []
    run: list[int] = []
    for row, prompt in enumerate(prompts):
        if row == 0 or prompt != prompts[row - 1]:
            first.append(row)
        run.append(len(first) - 1)
    return first, torch.tensor(run, dtype=torch.long)


def warp(logits: torch.Tensor, spec: GenerationSpec) -> torch.Tensor:
    """`generate`'s temperature, top-k and top-p warpers, in its order."""
    scores = logits.float() / spec.temperature
    vocab = scores.shape[-1]
    if spec.top_k and 0 < spec.top_k < vocab:
        kth = torch.topk(scores, spec.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if spec.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1.0 - spec.top_p
        drop[:, -1] = False  # the most likely token always stays
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return scores


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: list[list[int]],
    spec: GenerationSpec,
    eos_ids: list[int],
    pad_id: int,
    device: torch.device,
    record_logprobs: bool,
) -> tuple[torch.Tensor, torch.Tensor, Sampled]:
    """Sample one completion per prompt. Returns the left-padded prompts [B, P], their mask, and
    the completions (see `Sampled`)."""
    ids, mask = left_pad(prompts, pad_id, spec.max_prompt_length)
    first, run = prompt_runs(prompts)
    run_ids, run_mask = ids[first].to(device), mask[first].to(device)
    cache = DynamicCache(config=model.config)
    logits = model(
        input_ids=run_ids,
        attention_mask=run_mask,
        position_ids=position_ids_from_mask(run_mask),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]
    run = run.to(device)
    cache.batch_select_indices(run)
    logits, attention = logits[run], run_mask[run]
    positions = attention.sum(dim=1)  # the next token's position in each sample
    rows = torch.arange(len(prompts), device=device)  # the samples still running
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    tokens = torch.full((len(prompts), spec.max_new_tokens), pad_id, dtype=torch.long)
    logprobs = torch.zeros(tokens.shape) if record_logprobs else None
    width = 0
    for step in range(spec.max_new_tokens):
        chosen = torch.multinomial(warp(logits, spec).softmax(dim=-1), num_samples=1).squeeze(1)
        tokens[rows.cpu(), step] = chosen.cpu()
        if logprobs is not None:
            scored = torch.log_softmax(logits.float() / spec.temperature, dim=-1)
            logprobs[rows.cpu(), step] = scored.gather(1, chosen.unsqueeze(1)).squeeze(1).cpu()
        width = step + 1
        running = ~torch.isin(chosen, eos)
        if step + 1 == spec.max_new_tokens or not bool(running.any()):
            break
        if not bool(running.all()):
            keep = running.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, chosen, attention, positions = rows[keep], chosen[keep], attention[keep], positions[keep]
        attention = torch.cat([attention, attention.new_ones(len(rows), 1)], dim=1)
        logits = model(
            input_ids=chosen.unsqueeze(1),
            attention_mask=attention,
            position_ids=positions.unsqueeze(1),
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1]
        positions = positions + 1
    return ids, mask, Sampled(tokens[:, :width], None if logprobs is None else logprobs[:, :width])
