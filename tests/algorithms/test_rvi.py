"""reward_variance_increase against an independent brute-force solver, plus its contract."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from rlhf_trainer.algorithms import reward_variance_increase

TOL = 1e-9


def brute_force(
    rewards: list[float], weights: list[float], low: float, high: float
) -> tuple[float, list[float]]:
    """Global maximum of sum w z^2 by enumerating every vertex of the feasible polytope.

    Independent of the library's reasoning: ties are merged (the tie constraint makes them one
    variable), the feasible set in block values y is {low <= y_1 <= ... <= y_m <= high,
    sum W y = S}; a convex function is maximised at a vertex; a vertex makes m - 1 of the m + 1
    chain inequalities tight. Every such choice is solved as a linear system and kept if feasible.
    """
    values = sorted(set(rewards))
    block_w = [sum(w for r, w in zip(rewards, weights, strict=True) if r == v) for v in values]
    target = sum(r * w for r, w in zip(rewards, weights, strict=True))
    m = len(values)
    # Inequalities a . y <= b: -y_1 <= -low; y_k - y_{k+1} <= 0; y_m <= high.
    rows, rhs = [], []
    first = np.zeros(m)
    first[0] = -1.0
    rows.append(first)
    rhs.append(-low)
    for k in range(m - 1):
        row = np.zeros(m)
        row[k], row[k + 1] = 1.0, -1.0
        rows.append(row)
        rhs.append(0.0)
    last = np.zeros(m)
    last[-1] = 1.0
    rows.append(last)
    rhs.append(high)
    best_obj, best_y = -np.inf, None
    for active in itertools.combinations(range(m + 1), m - 1):
        a = np.array([rows[i] for i in active] + [np.array(block_w)])
        b = np.array([rhs[i] for i in active] + [target])
        if abs(np.linalg.det(a)) < 1e-12:
            continue
        y = np.linalg.solve(a, b)
        if all(np.dot(rows[i], y) <= rhs[i] + 1e-9 for i in range(m + 1)):
            obj = float(np.dot(block_w, y * y))
            if obj > best_obj:
                best_obj, best_y = obj, y
    assert best_y is not None, "the input itself is feasible, so a vertex must exist"
    by_value = dict(zip(values, best_y, strict=True))
    return best_obj, [float(by_value[r]) for r in rewards]


def random_feasible_point(rewards, weights, low, high, rng: random.Random) -> list[float]:
    """A random point satisfying every constraint, built without the library's vertex structure."""
    values = sorted(set(rewards))
    target_mean = sum(r * w for r, w in zip(rewards, weights, strict=True)) / sum(weights)
    draws = sorted(rng.uniform(low, high) for _ in values)
    u = [dict(zip(values, draws, strict=True))[r] for r in rewards]
    u_mean = sum(x * w for x, w in zip(u, weights, strict=True)) / sum(weights)
    # Mix with the constant vector at low or high: keeps the order and the bounds, hits the mean.
    anchor = low if u_mean > target_mean else high
    lam = 1.0 if u_mean == anchor else (target_mean - anchor) / (u_mean - anchor)
    return [lam * x + (1 - lam) * anchor for x in u]


def weighted_var(z, w) -> float:
    mean = sum(a * b for a, b in zip(z, w, strict=True)) / sum(w)
    return sum(b * (a - mean) ** 2 for a, b in zip(z, w, strict=True)) / sum(w)


def random_group(rng: random.Random, n: int):
    low = rng.choice([0.0, -1.0, -3.5, 2.0])
    high = low + rng.choice([1.0, 2.0, 7.25])
    if rng.random() < 0.5:  # few distinct levels: many ties, and bounds hit exactly
        levels = [low, high] + [rng.uniform(low, high) for _ in range(rng.randint(1, 3))]
        rewards = [rng.choice(levels) for _ in range(n)]
    else:
        rewards = [rng.uniform(low, high) for _ in range(n)]
    weights = [1.0] * n if rng.random() < 0.4 else [rng.uniform(0.1, 3.0) for _ in range(n)]
    return rewards, weights, low, high


def test_matches_brute_force_on_random_groups_and_keeps_every_constraint() -> None:
    rng = random.Random(1234)
    for case in range(600):
        n = 1 + case % 12
        rewards, weights, low, high = random_group(rng, n)
        z = reward_variance_increase(
            torch.tensor(rewards, dtype=torch.float64), low, high, torch.tensor(weights, dtype=torch.float64)
        ).tolist()
        best_obj, best_z = brute_force(rewards, weights, low, high)
        ctx = f"case {case}: r={rewards} w={weights} range=[{low}, {high}] z={z} brute={best_z}"
        assert all(low - TOL <= v <= high + TOL for v in z), ctx
        for i, j in itertools.product(range(n), repeat=2):
            if rewards[i] > rewards[j]:
                assert z[i] >= z[j] - TOL, ctx
            if rewards[i] == rewards[j]:
                assert z[i] == z[j], ctx
        wsum = sum(weights)
        assert sum(a * b for a, b in zip(z, weights, strict=True)) / wsum == pytest.approx(
            sum(a * b for a, b in zip(rewards, weights, strict=True)) / wsum, abs=1e-9
        ), ctx
        objective = sum(b * a * a for a, b in zip(z, weights, strict=True))
        assert objective == pytest.approx(best_obj, rel=1e-9, abs=1e-9), ctx
        assert z == pytest.approx(best_z, abs=1e-7), ctx
        assert weighted_var(z, weights) >= weighted_var(rewards, weights) - TOL, ctx
        for _ in range(3):
            other = random_feasible_point(rewards, weights, low, high, rng)
            assert objective >= sum(b * a * a for a, b in zip(other, weights, strict=True)) - 1e-9, ctx


def test_at_most_one_tie_block_lies_strictly_inside_the_range() -> None:
    rng = random.Random(7)
    for _ in range(200):
        rewards, weights, low, high = random_group(rng, rng.randint(2, 16))
        z = reward_variance_increase(
            torch.tensor(rewards, dtype=torch.float64), low, high, torch.tensor(weights, dtype=torch.float64)
        )
        inner = {v for v in z.tolist() if low + 1e-12 < v < high - 1e-12}
        assert len(inner) <= 1


def test_worked_example_pushes_extremes_to_the_bounds() -> None:
    # Sum 2.0 over [0, 1]: the two best reach 1, the rest drops to 0.
    z = reward_variance_increase(torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64), 0.0, 1.0)
    assert z.tolist() == [0.0, 0.0, 1.0, 1.0]
    # Sum 1.2: the tied pair shares what the bottom gives up.
    z = reward_variance_increase(torch.tensor([0.5, 0.2, 0.5], dtype=torch.float64), 0.0, 1.0)
    assert z.tolist() == pytest.approx([0.6, 0.0, 0.6])
    # Uneven weights: S = 2.4 with weights [1, 2, 1, 1]; top two at 1, the weight-2 block at 0.2.
    z = reward_variance_increase(
        torch.tensor([0.8, 0.4, 0.6, 0.2], dtype=torch.float64),
        0.0,
        1.0,
        torch.tensor([1.0, 2.0, 1.0, 1.0], dtype=torch.float64),
    )
    assert z.tolist() == pytest.approx([1.0, 0.2, 1.0, 0.0])


def test_binary_rewards_are_already_optimal() -> None:
    r = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    assert torch.equal(reward_variance_increase(r, 0.0, 1.0), r)


def test_single_sample_and_all_equal_groups_come_back_unchanged() -> None:
    single = torch.tensor([[0.3], [0.9]], dtype=torch.float64)
    assert torch.equal(reward_variance_increase(single, 0.0, 1.0), single)
    equal = torch.full((3, 5), 0.1 + 0.2, dtype=torch.float64)  # a value with rounding in it
    assert torch.equal(reward_variance_increase(equal, 0.0, 1.0), equal)


def test_batched_over_leading_dims_matches_group_by_group_with_per_group_ranges() -> None:
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(3, 4, 6, generator=gen, dtype=torch.float64).round(decimals=1)
    low = torch.zeros(3, 4, dtype=torch.float64) - torch.arange(4, dtype=torch.float64)
    high = torch.ones(3, 4, dtype=torch.float64) * 2.0
    weights = torch.rand(6, generator=gen, dtype=torch.float64) + 0.5
    batched = reward_variance_increase(rewards, low, high, weights)
    assert batched.shape == rewards.shape
    for i, j in itertools.product(range(3), range(4)):
        one = reward_variance_increase(rewards[i, j], low[i, j].item(), high[i, j].item(), weights)
        assert torch.allclose(batched[i, j], one, atol=1e-12)


def test_float32_input_stays_float32_and_close_to_float64() -> None:
    gen = torch.Generator().manual_seed(1)
    r64 = torch.rand(1000, 16, generator=gen, dtype=torch.float64)
    z32 = reward_variance_increase(r64.float(), 0.0, 1.0)
    assert z32.dtype == torch.float32
    z64 = reward_variance_increase(r64.float().double(), 0.0, 1.0)
    assert torch.allclose(z32.double(), z64, atol=1e-5)
    assert torch.allclose(z32.double().mean(-1), r64.float().double().mean(-1), atol=1e-5)


def test_integer_rewards_are_promoted_to_float() -> None:
    z = reward_variance_increase(torch.tensor([0, 1, 2, 3]), 0.0, 3.0)
    assert z.is_floating_point()
    assert z.tolist() == pytest.approx([0.0, 0.0, 3.0, 3.0])


@pytest.mark.parametrize(
    ("rewards", "low", "high", "weights", "message"),
    [
        ([0.5, 1.5], 0.0, 1.0, None, "outside the reward range"),
        ([-0.1, 0.5], 0.0, 1.0, None, "outside the reward range"),
        ([0.5, 0.5], 1.0, 1.0, None, "low < high"),
        ([0.5, 0.5], 2.0, 1.0, None, "low < high"),
        ([0.5, float("nan")], 0.0, 1.0, None, "finite"),
        ([0.2, 0.5], 0.0, 1.0, [1.0, 0.0], "weights"),
        ([0.2, 0.5], 0.0, 1.0, [1.0, -2.0], "weights"),
        ([0.2, 0.5], 0.0, 1.0, [1.0, 1.0, 1.0], "weights"),
    ],
)
def test_invalid_inputs_raise_value_error_naming_the_problem(rewards, low, high, weights, message) -> None:
    w = None if weights is None else torch.tensor(weights, dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        reward_variance_increase(torch.tensor(rewards, dtype=torch.float64), low, high, w)


def test_scalar_rewards_are_rejected() -> None:
    with pytest.raises(ValueError, match="group dimension"):
        reward_variance_increase(torch.tensor(0.5), 0.0, 1.0)
