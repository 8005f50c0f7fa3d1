"""Masked reductions agree with the packed values, whatever the padding holds and wherever it sits."""

from __future__ import annotations

import statistics

import pytest
import torch

from rlhf_trainer.algorithms import masked_mean, masked_sum, masked_var, masked_whiten
from rlhf_trainer.algorithms.aggregation import aggregate_loss, get_loss_aggregation

NAN = float("nan")
VALID = [[1.0, 2.0, 3.0], [4.0, 6.0], [10.0]]


def padded(side: str, pad_value: float = NAN) -> tuple[torch.Tensor, torch.Tensor]:
    """VALID as a [3, 5] batch padded on ``side`` ('left', 'right' or 'both') with ``pad_value``."""
    values = torch.full((3, 5), pad_value, dtype=torch.float64)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    for row, seq in enumerate(VALID):
        start = {"left": 5 - len(seq), "right": 0, "both": 1}[side]
        values[row, start : start + len(seq)] = torch.tensor(seq, dtype=torch.float64)
        mask[row, start : start + len(seq)] = True
    return values, mask


FLAT = [x for seq in VALID for x in seq]


@pytest.mark.parametrize("side", ["left", "right", "both"])
@pytest.mark.parametrize("pad_value", [NAN, float("inf"), 1e30])
def test_reductions_equal_packed_statistics(side: str, pad_value: float) -> None:
    values, mask = padded(side, pad_value)
    assert masked_sum(values, mask).item() == pytest.approx(sum(FLAT))
    assert masked_mean(values, mask).item() == pytest.approx(statistics.fmean(FLAT))
    assert masked_var(values, mask).item() == pytest.approx(statistics.variance(FLAT))
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(statistics.pvariance(FLAT))
    row_means = masked_mean(values, mask, dim=-1)
    assert row_means.tolist() == pytest.approx([statistics.fmean(seq) for seq in VALID])


@pytest.mark.parametrize("side", ["left", "right", "both"])
def test_whiten_normalises_valid_positions_and_zeroes_padding(side: str) -> None:
    values, mask = padded(side)
    out = masked_whiten(values, mask)
    mean, std = statistics.fmean(FLAT), statistics.stdev(FLAT)
    assert out[mask].tolist() == pytest.approx([(x - mean) / std for x in FLAT])
    assert (out[~mask] == 0).all()
    kept = masked_whiten(values, mask, shift_mean=False)
    assert kept[mask].tolist() == pytest.approx([(x - mean) / std + mean for x in FLAT])


def test_float_and_int_masks_behave_like_bool_masks() -> None:
    values, mask = padded("left", 5.0)
    for other in (mask.float(), mask.long()):
        assert masked_mean(values, other).item() == pytest.approx(statistics.fmean(FLAT))


def test_empty_mask_gives_zero_not_nan() -> None:
    values = torch.tensor([[NAN, 1.0]])
    empty = torch.zeros(1, 2, dtype=torch.bool)
    assert masked_mean(values, empty).item() == 0.0
    assert masked_var(values, empty).item() == 0.0


@pytest.mark.parametrize("side", ["left", "right", "both"])
def test_loss_aggregations_match_hand_values(side: str) -> None:
    losses, mask = padded(side)
    # token-mean: 26 / 6; seq-mean-token-mean: mean(2, 5, 10); token-sum-norm: 26 / (3 rows * 8).
    assert aggregate_loss(losses, mask, "token-mean").item() == pytest.approx(26 / 6)
    assert aggregate_loss(losses, mask, "seq-mean-token-mean").item() == pytest.approx(17 / 3)
    assert aggregate_loss(losses, mask, "seq-mean-token-sum-norm", max_response_length=8).item() == (
        pytest.approx(26 / 24)
    )


def test_seq_mean_token_mean_skips_empty_rows() -> None:
    losses = torch.tensor([[1.0, 3.0], [NAN, NAN]])
    mask = torch.tensor([[True, True], [False, False]])
    assert aggregate_loss(losses, mask, "seq-mean-token-mean").item() == pytest.approx(2.0)


def test_token_sum_norm_requires_the_constant_and_unknown_modes_list_the_valid_ones() -> None:
    losses, mask = padded("right")
    with pytest.raises(ValueError, match="max_response_length"):
        aggregate_loss(losses, mask, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="token-mean"):
        get_loss_aggregation("sequence-mean")
