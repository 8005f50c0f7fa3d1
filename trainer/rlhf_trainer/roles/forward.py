"""Forward passes shared by the roles: token log-probabilities and values over completions."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..algorithms import entropy_from_logits, logprobs_from_logits
from ..engine.models import position_ids_from_mask
from ..rollout_batch import RolloutBatch


def policy_forward(
    model: Callable[..., object], micro: RolloutBatch, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities [b, r] of the completion tokens under `model` (logits divided by the
    sampling temperature, matching the distribution sampled from), and optionally their entropy.

    Only the last r + 1 positions go through the LM head: logits at position t score token t + 1.
    """
    width = micro.response_width
    output = model(
        input_ids=micro.input_ids,
        attention_mask=micro.attention_mask,
        position_ids=position_ids_from_mask(micro.attention_mask),
        use_cache=False,
        logits_to_keep=width + 1,
    )
    logits = output.logits[:, :-1]
    logprobs = logprobs_from_logits(logits, micro.response_ids, temperature=temperature)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = entropy_from_logits(logits.detach(), temperature=temperature)
    return logprobs, entropy


def value_forward(model: Callable[..., torch.Tensor], micro: RolloutBatch) -> torch.Tensor:
    """Critic values [b, r]: V at the position before each completion token (the state it is chosen in)."""
    values = model(
        input_ids=micro.input_ids,
        attention_mask=micro.attention_mask,
        position_ids=position_ids_from_mask(micro.attention_mask),
    )
    return values[:, micro.prompt_width - 1 : -1]


@torch.no_grad()
def per_token_outputs(
    fn: Callable[[RolloutBatch], torch.Tensor],
    batch: RolloutBatch,
    micro_batch_size: int,
    device: torch.device,
    passes: Callable[[int], int] | None = None,
) -> torch.Tensor:
    """Run `fn` over micro batches and reassemble [B, R] on CPU (zeros past each micro batch's width).

    `passes(local)`: how many forward passes this rank must make when it needs `local` (ZeRO-3
    ranks each make as many as the busiest one: every forward gathers partitions collectively);
    the extra passes run on a one-row stand-in and are dropped.
    """
    out = torch.zeros(batch.size, batch.response_width, dtype=torch.float32)
    micros = list(batch.micro_batches(micro_batch_size))
    total = passes(len(micros)) if passes is not None else len(micros)
    row = 0
    for micro in micros:
        piece = fn(micro.to(device)).float().cpu()
        out[row : row + micro.size, : piece.shape[1]] = piece
        row += micro.size
    for _ in range(total - len(micros)):
        fn(_stand_in(batch).to(device))
    return out


def _stand_in(batch: RolloutBatch) -> RolloutBatch:
    """One row to run a forward pass on: this batch's first, or a two-token sequence when empty."""
    if batch.size > 0:
        return batch.rows(0, 1)
    ids = torch.zeros(1, 2, dtype=torch.long)
    return RolloutBatch(ids, torch.ones_like(ids), prompt_width=1)
