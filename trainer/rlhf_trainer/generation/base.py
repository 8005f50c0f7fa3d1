"""The interface every generation engine implements, and what it returns."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class GenerationOutput:
    """Prompts and completions in one padded tensor.

    `input_ids` [B, P + R]: each prompt left-padded to width P, its completion after it, right-padded
    to width R. `attention_mask` is 1 on prompt tokens and on completion tokens up to and including
    the first end-of-sequence token, 0 on padding and on anything after that token.
    `logprobs` [B, R], when the engine reports them: the log-probability of each completion token
    under the distribution it was sampled from (0 on padding).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_width: int
    logprobs: torch.Tensor | None = None

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width :]

    @property
    def response_mask(self) -> torch.Tensor:
        return self.attention_mask[:, self.prompt_width :]


class GenerationEngine(Protocol):
    def generate(self, prompts: list[list[int]]) -> GenerationOutput:
        """Sample one completion per prompt (repeat a prompt for several samples)."""
        ...


def completion_mask(responses: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1 on completion tokens up to and including the first end-of-sequence token, else 0."""
    is_eos = torch.isin(responses, torch.tensor(eos_ids, device=responses.device))
    # Tokens strictly after the first eos have at least one eos before them.
    eos_before = (is_eos.cumsum(dim=-1) - is_eos.long()) > 0
    return (~eos_before).long()


def left_pad(prompts: list[list[int]], pad_id: int, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-truncate each prompt to max_length tokens and left-pad to the longest: (ids, mask)."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("a prompt has no tokens")
    kept = [p[-max_length:] for p in prompts]
    width = max(len(p) for p in kept)
    ids = torch.full((len(kept), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(kept), width), dtype=torch.long)
    for row, tokens in enumerate(kept):
        ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
        mask[row, width - len(tokens) :] = 1
    return ids, mask


def merge_outputs(outputs: list[GenerationOutput], pad_id: int) -> GenerationOutput:
    """Concatenate the outputs of several engines (rows in order), re-padding to common widths."""
    if len(outputs) == 1:
        return outputs[0]
    prompt_width = max(o.prompt_width for o in outputs)
    response_width = max(o.input_ids.shape[1] - o.prompt_width for o in outputs)
    with_logprobs = [o.logprobs is not None for o in outputs]
    if any(with_logprobs) and not all(with_logprobs):
        raise ValueError("some engines reported sampling log-probabilities and some did not")
    ids, masks, logprobs = [], [], []
    for o in outputs:
        left = prompt_width - o.prompt_width
        right = response_width - (o.input_ids.shape[1] - o.prompt_width)
        ids.append(torch.nn.functional.pad(o.input_ids, (left, right), value=pad_id))
        masks.append(torch.nn.functional.pad(o.attention_mask, (left, right), value=0))
        if o.logprobs is not None:
            logprobs.append(torch.nn.functional.pad(o.logprobs, (0, right), value=0.0))
    return GenerationOutput(
        torch.cat(ids), torch.cat(masks), prompt_width, torch.cat(logprobs) if logprobs else None
    )


def gather_rows(
    pieces: Sequence[tuple[Sequence[int], GenerationOutput]], rows: Iterable[int], pad_id: int
) -> GenerationOutput:
    """`rows`, in that order, out of pieces that each hold some rows (a streamed generation's
    (row indices, output) pieces), re-padded to common widths as merge_outputs pads. Every
    row's tokens, mask and log-probabilities are those of its piece: the whole rollout gathered
    from its pieces equals the rollout generated in one call."""
    where = {row: (i, j) for i, (indices, _) in enumerate(pieces) for j, row in enumerate(indices)}
    wanted = list(rows)
    missing = [row for row in wanted if row not in where]
    if missing:
        raise ValueError(f"rows {missing[:8]} are in no piece")
    chosen: dict[int, list[int]] = {}
    for row in wanted:
        chosen.setdefault(where[row][0], []).append(where[row][1])
    parts, order = [], []
    for i, local in chosen.items():
        output, index = pieces[i][1], torch.tensor(local)
        logprobs = output.logprobs[index] if output.logprobs is not None else None
        parts.append(
            GenerationOutput(
                output.input_ids[index], output.attention_mask[index], output.prompt_width, logprobs
            )
        )
        order.extend(pieces[i][0][j] for j in local)
    merged = merge_outputs(parts, pad_id)
    position = {row: k for k, row in enumerate(order)}
    index = torch.tensor([position[row] for row in wanted], dtype=torch.long)
    return GenerationOutput(
        merged.input_ids[index],
        merged.attention_mask[index],
        merged.prompt_width,
        merged.logprobs[index] if merged.logprobs is not None else None,
    )
