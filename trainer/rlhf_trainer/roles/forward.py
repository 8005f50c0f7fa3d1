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
) -> torch.Tensor:
    """Run `fn` over micro batches and reassemble [B, R] on CPU (zeros past each micro batch's width)."""
    out = torch.zeros(batch.size, batch.response_width, dtype=torch.float32)
    row = 0
    for micro in batch.micro_batches(micro_batch_size):
        piece = fn(micro.to(device)).float().cpu()
        out[row : row + micro.size, : piece.shape[1]] = piece
        row += micro.size
    return out
