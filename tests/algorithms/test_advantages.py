"""Advantage estimators: hand-worked values and plain-Python references on a padded batch."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from rlhf_trainer.algorithms import (
    ALGORITHM_ESTIMATORS,
    ESTIMATORS,
    AdvantageConfig,
    default_loss_aggregation,
    estimator_for_algorithm,
    gae,
    get_estimator,
)
from rlhf_trainer.algorithms.returns import (
    discounted_returns,
    generalized_advantage_estimation,
    token_level_rewards,
)

NAN = float("nan")
# Six responses, three per prompt; every padding layout: right, left, both sides, none, single tokens.
MASK = torch.tensor(
    [
        [1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1],
        [0, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
        [0, 0, 0, 0, 1],
        [1, 0, 0, 0, 0],
    ],
    dtype=torch.bool,
)
REWARDS = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.2, 0.8], dtype=torch.float64)
N = 3
EXACT = AdvantageConfig(eps=0.0)


def kl_with_garbage() -> torch.Tensor:
    """Per-token KL: distinct values on response tokens, NaN on padding."""
    kl = torch.arange(30, dtype=torch.float64).reshape(6, 5) / 100.0
    return torch.where(MASK, kl, NAN)


def values_with_garbage() -> torch.Tensor:
    values = torch.linspace(-1.0, 1.0, 30, dtype=torch.float64).reshape(6, 5)
    return torch.where(MASK, values, NAN)


def expect_per_row(result_tensor: torch.Tensor, per_row: list[float]) -> None:
    for row, value in enumerate(per_row):
        valid = result_tensor[row][MASK[row]]
        assert valid.tolist() == pytest.approx([value] * len(valid)), f"row {row}"
    assert (result_tensor[~MASK] == 0).all()


def run(name: str, config: AdvantageConfig = EXACT, rewards: torch.Tensor = REWARDS, **kwargs):
    return get_estimator(name)(rewards, MASK, samples_per_prompt=N, config=config, **kwargs)


# ----------------------------------------------------------------- outcome (group) estimators

S2 = math.sqrt(0.12)  # unbiased std of [0.2, 0.2, 0.8]


def test_grpo_normalises_by_group_mean_and_std() -> None:
    result = run("grpo")
    expect_per_row(result.advantages, [1.0, -1.0, 0.0, -0.2 / S2, -0.2 / S2, 0.4 / S2])
    assert torch.equal(result.returns, result.advantages)


def test_dr_grpo_subtracts_the_group_mean_only() -> None:
    expect_per_row(run("dr_grpo").advantages, [0.5, -0.5, 0.0, -0.2, -0.2, 0.4])


def test_rloo_subtracts_the_mean_of_the_other_samples() -> None:
    expected = []
    for i, r in enumerate(REWARDS.tolist()):
        group = REWARDS.tolist()[(i // N) * N : (i // N + 1) * N]
        others = [x for j, x in enumerate(group) if j != i % N]
        expected.append(r - sum(others) / len(others))
    assert expected == pytest.approx([0.75, -0.75, 0.0, -0.3, -0.3, 0.6])
    expect_per_row(run("rloo").advantages, expected)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "grpovi", "reinforce_pp_baseline"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_equal_group_gets_exactly_zero_advantage(name: str, dtype: torch.dtype) -> None:
    # 0.7 * 3 / 3 != 0.7 in floating point: the rounding must not turn into an advantage.
    rewards = torch.tensor([0.7, 0.7, 0.7, 0.0, 1.0, 1.0], dtype=dtype)
    result = run(name, AdvantageConfig(), rewards)
    if name == "reinforce_pp_baseline":  # global whitening shifts every token; the group's returns are 0
        assert (result.returns[:3] == 0).all()
    else:
        assert (result.advantages[:3] == 0).all()
        assert result.metrics["groups/all_equal_fraction"].item() == 0.5


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_group_estimators_fold_kl_in_as_a_sequence_penalty(name: str) -> None:
    kl = kl_with_garbage()
    config = AdvantageConfig(eps=0.0, kl_coef=0.5, kl_in_reward=True)
    folded = run(name, config, kl=kl)
    kl_sums = torch.tensor([sum(kl[b][MASK[b]].tolist()) for b in range(6)], dtype=torch.float64)
    by_hand = run(name, EXACT, REWARDS - 0.5 * kl_sums)
    assert torch.allclose(folded.advantages, by_hand.advantages)
    # With the KL left to the loss, the estimator ignores it entirely.
    as_loss = run(name, AdvantageConfig(eps=0.0, kl_coef=0.5, kl_in_reward=False), kl=kl)
    assert torch.equal(as_loss.advantages, run(name).advantages)


def test_kl_in_reward_without_the_kl_tensor_is_an_error() -> None:
    with pytest.raises(ValueError, match="kl=None"):
        run("grpo", AdvantageConfig(kl_coef=0.1, kl_in_reward=True))


# ----------------------------------------------------------------- GRPOVI

GROUPVI_REWARDS = torch.tensor([1.0, 0.0, 0.5, 0.1, 0.3, 0.8], dtype=torch.float64)


def grpo_by_hand(group: list[float]) -> list[float]:
    mean, std = statistics.fmean(group), statistics.stdev(group)
    return [(x - mean) / std for x in group]


def test_grpovi_adjusts_rewards_then_normalises_like_grpo() -> None:
    config = AdvantageConfig(eps=0.0, reward_range="fixed", reward_low=0.0, reward_high=1.0)
    result = run("grpovi", config, GROUPVI_REWARDS)
    # Group 1 [1, 0, 0.5] is already extreme; group 2 [0.1, 0.3, 0.8] (sum 1.2) becomes [0, 0.2, 1].
    expect_per_row(result.advantages, grpo_by_hand([1.0, 0.0, 0.5]) + grpo_by_hand([0.0, 0.2, 1.0]))
    assert result.metrics["rvi/reward_std_after"] > result.metrics["rvi/reward_std_before"]
    # Batch mode sees [0, 1] as well here.
    batch = run("grpovi", AdvantageConfig(eps=0.0, reward_range="batch"), GROUPVI_REWARDS)
    assert torch.allclose(batch.advantages, result.advantages)


def test_grpovi_uses_the_configured_range() -> None:
    config = AdvantageConfig(eps=0.0, reward_range="fixed", reward_low=0.0, reward_high=2.0)
    result = run("grpovi", config, GROUPVI_REWARDS)
    # Over [0, 2], group 2 (sum 1.2) puts everything on its best sample: [0, 0, 1.2].
    for row, value in zip(range(3, 6), grpo_by_hand([0.0, 0.0, 1.2]), strict=True):
        assert result.advantages[row][MASK[row]].tolist() == pytest.approx([value] * int(MASK[row].sum()))


def test_grpovi_rejects_rewards_outside_the_fixed_range() -> None:
    config = AdvantageConfig(reward_range="fixed", reward_low=0.0, reward_high=0.9)
    with pytest.raises(ValueError, match=r"grpovi.*outside the reward range"):
        run("grpovi", config, GROUPVI_REWARDS)


def test_grpovi_batch_mode_with_one_reward_value_gives_zero_advantages() -> None:
    result = run("grpovi", AdvantageConfig(reward_range="batch"), torch.full((6,), 0.7, dtype=torch.float64))
    assert (result.advantages == 0).all()


# ----------------------------------------------------------------- token-level estimators


def rows_of(tensor: torch.Tensor) -> list[list[float]]:
    return [tensor[b][MASK[b]].tolist() for b in range(tensor.shape[0])]


def reference_returns(scores: list[float], kl_rows: list[list[float]], coef: float, gamma: float):
    out = []
    for score, kls in zip(scores, kl_rows, strict=True):
        rewards = [-coef * k for k in kls]
        rewards[-1] += score
        running, returns = 0.0, []
        for r in reversed(rewards):
            running = r + gamma * running
            returns.append(running)
        out.append(returns[::-1])
    return out


def reference_whiten(rows: list[list[float]]) -> list[list[float]]:
    flat = [x for row in rows for x in row]
    mean, var = statistics.fmean(flat), statistics.variance(flat)
    return [[(x - mean) / math.sqrt(var + 1e-8) for x in row] for row in rows]


def assert_rows(tensor: torch.Tensor, rows: list[list[float]]) -> None:
    assert rows_of(tensor) == [pytest.approx(row) for row in rows]
    assert (tensor[~MASK] == 0).all()


def test_token_rewards_put_the_score_on_the_last_token_and_the_kl_on_every_token() -> None:
    kl = torch.tensor([[0.1, 0.2, 0.3, NAN], [NAN, 0.1, 0.2, 0.3]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    rewards = token_level_rewards(torch.tensor([1.0, 2.0], dtype=torch.float64), mask, kl, kl_coef=0.5)
    assert rewards.tolist() == [
        pytest.approx([-0.05, -0.1, 0.85, 0.0]),
        pytest.approx([0.0, -0.05, -0.1, 1.85]),
    ]


def test_reinforce_pp_whitens_kl_shaped_returns_over_the_batch() -> None:
    config = AdvantageConfig(gamma=0.9, kl_coef=0.3, kl_in_reward=True)
    result = run("reinforce_pp", config, kl=kl_with_garbage())
    returns = reference_returns(REWARDS.tolist(), rows_of(kl_with_garbage()), 0.3, 0.9)
    assert_rows(result.returns, returns)
    assert_rows(result.advantages, reference_whiten(returns))


def test_reinforce_pp_single_row_by_hand() -> None:
    # Rewards [-0.05, -0.1, 0.85] (score 1, kl [0.1, 0.2, 0.3], coef 0.5, gamma 1): returns [0.7, 0.75, 0.85].
    mask = torch.tensor([[0, 1, 1, 1]], dtype=torch.bool)
    kl = torch.tensor([[NAN, 0.1, 0.2, 0.3]], dtype=torch.float64)
    result = get_estimator("reinforce_pp")(
        torch.tensor([1.0], dtype=torch.float64),
        mask,
        samples_per_prompt=1,
        config=AdvantageConfig(kl_coef=0.5, kl_in_reward=True),
        kl=kl,
    )
    assert result.returns.tolist() == [pytest.approx([0.0, 0.7, 0.75, 0.85])]


def test_reinforce_pp_baseline_subtracts_the_group_mean_before_shaping() -> None:
    config = AdvantageConfig(gamma=1.0, kl_coef=0.2, kl_in_reward=True)
    result = run("reinforce_pp_baseline", config, kl=kl_with_garbage())
    centered = [0.5, -0.5, 0.0, -0.2, -0.2, 0.4]
    returns = reference_returns(centered, rows_of(kl_with_garbage()), 0.2, 1.0)
    assert_rows(result.returns, returns)
    assert_rows(result.advantages, reference_whiten(returns))


def test_gae_recursion_by_hand_with_left_and_right_padding() -> None:
    # gamma 0.9, lam 0.8, V = [0.5, 0.4, 0.3], reward 1 at the end:
    # A_2 = 0.7, A_1 = -0.13 + 0.72 * 0.7 = 0.374, A_0 = -0.14 + 0.72 * 0.374 = 0.12928.
    expected_adv = [0.12928, 0.374, 0.7]
    expected_ret = [0.62928, 0.774, 1.0]
    for mask_row, values_row, rewards_row in (
        ([1, 1, 1, 0, 0], [0.5, 0.4, 0.3, NAN, 1e30], [0.0, 0.0, 1.0, NAN, 5.0]),
        ([0, 0, 1, 1, 1], [1e30, NAN, 0.5, 0.4, 0.3], [7.0, NAN, 0.0, 0.0, 1.0]),
    ):
        mask = torch.tensor([mask_row], dtype=torch.bool)
        adv, ret = generalized_advantage_estimation(
            torch.tensor([rewards_row], dtype=torch.float64),
            torch.tensor([values_row], dtype=torch.float64),
            mask,
            gamma=0.9,
            lam=0.8,
        )
        assert adv[mask].tolist() == pytest.approx(expected_adv)
        assert ret[mask].tolist() == pytest.approx(expected_ret)
        assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()


def test_gae_estimator_matches_a_plain_python_loop() -> None:
    config = AdvantageConfig(gamma=0.95, lam=0.9, kl_coef=0.1, kl_in_reward=True)
    values = values_with_garbage()
    result = gae(REWARDS, MASK, samples_per_prompt=N, config=config, kl=kl_with_garbage(), values=values)
    adv_rows, ret_rows = [], []
    for score, kls, vals in zip(REWARDS.tolist(), rows_of(kl_with_garbage()), rows_of(values), strict=True):
        rewards = [-0.1 * k for k in kls]
        rewards[-1] += score
        advs, last, next_v = [], 0.0, 0.0
        for r, v in zip(reversed(rewards), reversed(vals), strict=True):
            last = r + 0.95 * next_v - v + 0.95 * 0.9 * last
            next_v = v
            advs.append(last)
        advs = advs[::-1]
        adv_rows.append(advs)
        ret_rows.append([a + v for a, v in zip(advs, vals, strict=True)])
    assert_rows(result.returns, ret_rows)
    assert_rows(result.advantages, reference_whiten(adv_rows))


def test_gae_needs_values() -> None:
    with pytest.raises(ValueError, match="values"):
        run("gae")


# ----------------------------------------------------------------- padding, registry, config


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_garbage_in_padding_never_reaches_the_results(name: str) -> None:
    config = AdvantageConfig(gamma=0.9, lam=0.95, kl_coef=0.2, kl_in_reward=True)
    dirty = run(name, config, kl=kl_with_garbage(), values=values_with_garbage())
    clean = run(
        name,
        config,
        kl=torch.nan_to_num(kl_with_garbage(), nan=0.0),
        values=torch.nan_to_num(values_with_garbage(), nan=0.0),
    )
    for got, want in ((dirty.advantages, clean.advantages), (dirty.returns, clean.returns)):
        assert torch.isfinite(got).all()
        assert torch.equal(got, want)
        assert (got[~MASK] == 0).all()
    assert all(torch.isfinite(v) for v in dirty.metrics.values())


def test_registry_maps_every_api_algorithm_to_an_estimator() -> None:
    assert set(ESTIMATORS) == {
        "gae",
        "grpo",
        "dr_grpo",
        "reinforce_pp",
        "reinforce_pp_baseline",
        "rloo",
        "grpovi",
    }
    assert set(ALGORITHM_ESTIMATORS) == {
        "ppo",
        "grpo",
        "dr_grpo",
        "reinforce_pp",
        "reinforce_pp_baseline",
        "rloo",
        "grpovi",
    }
    assert estimator_for_algorithm("ppo") is ESTIMATORS["gae"]
    for algorithm in ALGORITHM_ESTIMATORS:
        if algorithm != "ppo":
            assert estimator_for_algorithm(algorithm) is ESTIMATORS[algorithm]
    assert default_loss_aggregation("dr_grpo") == "seq-mean-token-sum-norm"
    assert {default_loss_aggregation(a) for a in ALGORITHM_ESTIMATORS if a != "dr_grpo"} == {"token-mean"}


def test_unknown_names_are_errors_that_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'ppo'.*gae.*grpovi"):
        get_estimator("ppo")
    with pytest.raises(ValueError, match=r"unknown algorithm 'a2c'.*dr_grpo"):
        estimator_for_algorithm("a2c")
    with pytest.raises(ValueError, match="unknown algorithm"):
        default_loss_aggregation("a2c")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gamma": 1.5}, "gamma"),
        ({"lam": -0.1}, "lam"),
        ({"kl_coef": -1.0}, "kl_coef"),
        ({"reward_range": "fixed"}, "reward_low and reward_high"),
        (
            {"reward_range": "fixed", "reward_low": 1.0, "reward_high": 1.0},
            "reward_low must be < reward_high",
        ),
        ({"reward_range": "global"}, "reward_range"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        AdvantageConfig(**kwargs)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "grpovi", "reinforce_pp_baseline"])
def test_group_estimators_need_groups_of_two_or_more(name: str) -> None:
    with pytest.raises(ValueError, match="samples_per_prompt"):
        get_estimator(name)(REWARDS, MASK, samples_per_prompt=1, config=EXACT)
    with pytest.raises(ValueError, match="samples_per_prompt"):
        get_estimator(name)(REWARDS, MASK, samples_per_prompt=4, config=EXACT)


def test_a_masked_hole_inside_a_row_is_skipped_by_the_recursions() -> None:
    mask = torch.tensor([[1, 0, 1, 1, 0]], dtype=torch.bool)
    rewards = torch.tensor([[1.0, NAN, 0.0, 2.0, NAN]], dtype=torch.float64)
    values = torch.tensor([[0.5, NAN, 0.25, 1.0, NAN]], dtype=torch.float64)
    # gamma 0.5 over the three valid steps: returns [1 + 0.5 * (0 + 0.5 * 2), 0 + 0.5 * 2, 2].
    assert discounted_returns(rewards, mask, gamma=0.5).tolist() == [pytest.approx([1.5, 0.0, 1.0, 2.0, 0.0])]
    adv, _ = generalized_advantage_estimation(rewards, values, mask, gamma=0.5, lam=1.0)
    assert adv.tolist() == [pytest.approx([1.0, 0.0, 0.75, 1.0, 0.0])]


def test_gae_normalize_reward_whitens_the_scores_first() -> None:
    values = values_with_garbage()
    flat = REWARDS.tolist()
    mean, std = statistics.fmean(flat), statistics.stdev(flat)
    whitened = torch.tensor([(x - mean) / std for x in flat], dtype=torch.float64)
    got = gae(
        REWARDS, MASK, samples_per_prompt=N, config=AdvantageConfig(normalize_reward=True), values=values
    )
    want = gae(whitened, MASK, samples_per_prompt=N, config=AdvantageConfig(), values=values)
    assert torch.allclose(got.returns, want.returns)
    assert torch.allclose(got.advantages, want.advantages)
