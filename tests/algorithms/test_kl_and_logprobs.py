"""KL estimators, token log-probabilities and entropies."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_trainer.algorithms import (
    KL_ESTIMATORS,
    entropy_from_logits,
    get_kl_estimator,
    kl_loss,
    kl_penalty,
    logprobs_from_logits,
)

NAN = float("nan")


def test_estimators_match_their_formulas() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0, -0.5]], dtype=torch.float64)
    d = [0.5, -1.0, 0.0]
    assert kl_penalty(logp, ref, "k1").tolist() == [pytest.approx(d)]
    assert kl_penalty(logp, ref, "k2").tolist() == [pytest.approx([x * x / 2 for x in d])]
    # k3 = e^{-d} - 1 + d: 0.10653, 0.71828, 0.
    assert kl_penalty(logp, ref, "k3").tolist() == [pytest.approx([math.exp(-x) - 1 + x for x in d])]
    assert kl_penalty(logp, ref, "k3")[0, 1].item() == pytest.approx(math.e - 2)


def test_k3_is_clamped_so_one_extreme_token_cannot_explode() -> None:
    logp = torch.tensor([[-40.0, -0.1, -3.0]], dtype=torch.float64)
    ref = torch.tensor([[-0.1, -40.0, -3.0]], dtype=torch.float64)
    k3 = kl_penalty(logp, ref, "k3")
    assert k3.tolist() == [[10.0, 10.0, 0.0]]
    # The log-ratio clamp keeps the exponential finite before the value clamp.
    assert torch.isfinite(get_kl_estimator("k3")(torch.tensor([-1e4]))).all()
    # k1 is not clamped (that would bias it).
    assert kl_penalty(logp, ref, "k1")[0, 0].item() == pytest.approx(-39.9)


def test_padding_is_zero_and_garbage_there_does_not_leak() -> None:
    logp = torch.tensor([[NAN, -1.0, -2.0], [-1.0, -2.0, float("inf")]])
    ref = torch.tensor([[1e30, -1.5, -1.0], [-1.5, -1.0, NAN]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]], dtype=torch.bool)
    for name in KL_ESTIMATORS:
        kl = kl_penalty(logp, ref, name, mask)
        assert torch.isfinite(kl).all() and (kl[~mask] == 0).all()
        assert kl[0, 1:].tolist() == pytest.approx(kl[1, :2].tolist())


def test_kl_loss_aggregates_the_masked_per_token_kl() -> None:
    logp = torch.tensor([[-1.0, -2.0, NAN]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0, NAN]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    expected = ((math.exp(-0.5) - 0.5) + (math.e - 2)) / 2
    assert kl_loss(logp, ref, mask, "k3").item() == pytest.approx(expected)
    assert kl_loss(logp, ref, mask, "k1", "seq-mean-token-sum-norm", max_response_length=4).item() == (
        pytest.approx(-0.5 / 4)
    )


def test_unknown_kl_estimator_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


@pytest.mark.parametrize("chunk_rows", [1, 5, 4096])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_log_softmax_gather_for_any_chunking(chunk_rows: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=gen, dtype=torch.float64) * 4
    tokens = torch.randint(0, 11, (3, 7), generator=gen)
    got = logprobs_from_logits(logits, tokens, temperature=temperature, chunk_rows=chunk_rows)
    want = torch.log_softmax(logits / temperature, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(got, want, atol=1e-12)


def test_logprobs_gradient_matches_log_softmax() -> None:
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(2, 5, 9, generator=gen, dtype=torch.float64)
    tokens = torch.randint(0, 9, (2, 5), generator=gen)
    a = base.clone().requires_grad_()
    b = base.clone().requires_grad_()
    logprobs_from_logits(a, tokens, chunk_rows=3).sum().backward()
    torch.log_softmax(b, -1).gather(-1, tokens.unsqueeze(-1)).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-12)


def test_bf16_logits_are_computed_in_float32() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = (torch.randn(2, 4, 50, generator=gen) * 3).bfloat16()
    tokens = torch.randint(0, 50, (2, 4), generator=gen)
    got = logprobs_from_logits(logits, tokens)
    assert got.dtype == torch.float32
    want = torch.log_softmax(logits.float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(got, want, atol=1e-6)


def test_entropy_matches_its_definition_and_known_values() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64)
    probs = torch.softmax(logits, -1)
    want = -(probs * probs.log()).sum(-1)
    assert torch.allclose(entropy_from_logits(logits, chunk_rows=4), want, atol=1e-12)
    uniform = torch.zeros(1, 8, dtype=torch.float64)
    assert entropy_from_logits(uniform).item() == pytest.approx(math.log(8))
    peaked = torch.tensor([[1e4, 0.0, 0.0]], dtype=torch.float64)
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-12)


def test_shape_and_temperature_errors() -> None:
    with pytest.raises(ValueError, match="does not match tokens"):
        logprobs_from_logits(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), temperature=0.0)
