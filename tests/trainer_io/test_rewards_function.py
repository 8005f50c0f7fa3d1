"""Function rewards, the RewardSet's combination and validation, and the built-in rules."""

from __future__ import annotations

import copy
import importlib
import re
import sys
from pathlib import Path

import pytest

from rlhf_trainer.api.spec import RLHFJobSpec
from rlhf_trainer.api.validation import parse_model
from rlhf_trainer.rewards import RewardConfigError, RewardError, build_rewards, reward_source_names
from rlhf_trainer.rewards.builtin import boxed_answer, boxed_format, exact_match, normalise_answer

from .helpers import BASE_SPEC, make_spec


def write_module(directory: Path, name: str, body: str) -> None:
    (directory / f"{name}.py").write_text(body)


def test_function_next_to_the_manifest_is_imported_from_the_current_dir(in_tmp_cwd: Path) -> None:
    write_module(
        in_tmp_cwd,
        "io_rewards_len",
        "def score(prompts, completions, labels):\n    return [float(len(c)) for c in completions]\n",
    )
    rewards = build_rewards(make_spec([{"function": "io_rewards_len:score"}]))
    rewards.preflight()
    result = rewards.score(["p", "q"], ["abc", "de"], [None, None])
    assert result.total == [3.0, 2.0]
    assert result.per_source == {"score": [3.0, 2.0]}


def test_missing_module_error_names_the_field(in_tmp_cwd: Path) -> None:
    rewards = build_rewards(
        make_spec(
            [
                {"function": "rlhf_trainer.rewards.builtin:exact_match"},
                {"function": "no_such_reward_module:fn"},
            ]
        )
    )
    with pytest.raises(RewardConfigError) as err:
        rewards.preflight()
    assert str(err.value).startswith(
        "spec.models.reward[1].function: cannot import module 'no_such_reward_module': ModuleNotFoundError"
    )


def test_module_raising_on_import_and_missing_attribute_are_both_reported(in_tmp_cwd: Path) -> None:
    write_module(in_tmp_cwd, "io_rewards_broken", "raise RuntimeError('boom at import')\n")
    write_module(in_tmp_cwd, "io_rewards_ok", "X = 1\n")
    rewards = build_rewards(
        make_spec(
            [
                {"function": "io_rewards_broken:fn"},
                {"function": "io_rewards_ok:missing"},
                {"function": "io_rewards_ok:X"},
            ]
        )
    )
    with pytest.raises(RewardConfigError) as err:
        rewards.preflight()
    lines = str(err.value).splitlines()
    assert lines == [
        "spec.models.reward[0].function: cannot import module 'io_rewards_broken': RuntimeError: boom at import",
        "spec.models.reward[1].function: module 'io_rewards_ok' has no attribute 'missing'",
        "spec.models.reward[2].function: 'io_rewards_ok:X' is a int, not a callable",
    ]


def test_weighted_combination_is_exact(in_tmp_cwd: Path) -> None:
    write_module(
        in_tmp_cwd,
        "io_rewards_pair",
        (
            "def length(prompts, completions, labels):\n    return [float(len(c)) for c in completions]\n"
            "def label(prompts, completions, labels):\n    return [float(x) for x in labels]\n"
        ),
    )
    spec = make_spec(
        [
            {"function": "io_rewards_pair:length", "weight": 0.5},
            {"name": "lab", "function": "io_rewards_pair:label", "weight": -2.0},
        ]
    )
    result = build_rewards(spec).score(["a", "b", "c"], ["xx", "yyyy", ""], [1, 0, 3])
    assert result.total == [0.5 * 2 - 2.0 * 1, 0.5 * 4 - 2.0 * 0, 0.5 * 0 - 2.0 * 3]
    assert result.per_source == {"length": [2.0, 4.0, 0.0], "lab": [1.0, 0.0, 3.0]}
    assert result.source_means() == {"reward/length": 2.0, "reward/lab": 4.0 / 3}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "return [1.0]",
            "spec.models.reward[0].function (function io_rewards_bad:fn): returned 1 rewards for 2 completions",
        ),
        ("return [1.0, float('nan')]", "reward 1 is nan; rewards must be finite"),
        ("return [1.0, 'x']", "reward 1 is 'x'; rewards must be numbers"),
        ("return 3.0", "returned float; expected a list of 2 floats"),
    ],
)
def test_bad_return_values_fail_clearly(in_tmp_cwd: Path, body: str, message: str) -> None:
    sys.modules.pop("io_rewards_bad", None)
    importlib.invalidate_caches()
    write_module(in_tmp_cwd, "io_rewards_bad", f"def fn(prompts, completions, labels):\n    {body}\n")
    rewards = build_rewards(make_spec([{"function": "io_rewards_bad:fn"}]))
    with pytest.raises(RewardError, match=re.escape(message)):
        rewards.score(["a", "b"], ["c", "d"], [None, None])


def test_tensor_and_array_returns_are_accepted(in_tmp_cwd: Path) -> None:
    write_module(
        in_tmp_cwd,
        "io_rewards_np",
        (
            "import numpy as np\nimport torch\n"
            "def arr(prompts, completions, labels):\n    return np.array([1.0, 2.0])\n"
            "def ten(prompts, completions, labels):\n    return torch.tensor([0.5, 0.25])\n"
        ),
    )
    result = build_rewards(
        make_spec([{"function": "io_rewards_np:arr"}, {"function": "io_rewards_np:ten"}])
    ).score(["a", "b"], ["c", "d"])
    assert result.total == [1.5, 2.25]


def test_source_names_are_derived_and_deduplicated() -> None:
    spec = make_spec(
        [
            {"function": "rlhf_trainer.rewards.builtin:boxed_answer"},
            {"function": "other.module:boxed_answer"},
            {"url": "http://Reward-Judge.team-a.svc:8000/score"},
            {"model": "/models/Skywork-RM_v0.2/"},
            {"name": "boxed_answer-3", "function": "x:y"},
            {"function": "z:boxed_answer"},
        ]
    )
    assert reward_source_names(spec) == [
        "boxed_answer",
        "boxed_answer-2",
        "reward-judge-team-a-svc",
        "skywork-rm_v0-2",
        "boxed_answer-3",
        "boxed_answer-4",
    ]


def test_reserved_and_duplicate_names_are_rejected_by_the_api_with_the_field() -> None:
    def errors(rewards: list[dict]) -> list[str]:
        spec = {**copy.deepcopy(BASE_SPEC), "models": {**BASE_SPEC["models"], "reward": rewards}}
        return [str(error) for error in parse_model(RLHFJobSpec, spec, prefix="spec")[1]]

    assert errors([{"name": "mean", "function": "a:b"}])[0].startswith(
        "spec.models.reward[0].name: must not be one of mean"
    )
    assert errors([{"name": "x", "function": "a:b"}, {"name": "x", "function": "a:c"}]) == [
        "spec.models.reward: names must be unique (each keys the metric reward/<name>)"
    ]


def test_builtin_exact_match_strips_whitespace() -> None:
    assert exact_match(["p"] * 3, [" 42\n", "42.0", "x"], ["42", "42", " x "]) == [1.0, 0.0, 1.0]


def test_builtin_boxed_answer_reads_the_last_box_and_normalises_numbers() -> None:
    completions = [
        r"First \boxed{3}, finally \boxed{ 4 }.",
        r"The answer is $\boxed{\frac{1}{2}}$",
        r"\boxed{1,000}",
        r"\boxed{2.50}",
        r"\boxed{\text{B}}",
        r"\boxed{x^{2}+1}",
        "no box: 4",
        r"\boxed{4",
        r"\boxed{5}",
    ]
    labels = ["4", "0.5", 1000, "5/2", "B", "x^{2} + 1", "4", "4", "#### 6"]
    assert boxed_answer([""] * 9, completions, labels) == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_builtin_boxed_answer_without_labels_says_which_field_to_set() -> None:
    with pytest.raises(ValueError, match="spec.data.prompts.labelKey"):
        boxed_answer(["p"], [r"\boxed{1}"], [None])


def test_builtin_boxed_format() -> None:
    assert boxed_format(["p"] * 3, [r"so \boxed{7}", "7", r"\boxed{"], [None] * 3) == [1.0, 0.0, 0.0]


def test_normalise_answer_forms() -> None:
    assert normalise_answer(" -0.50 ") == "-1/2"
    assert normalise_answer("$12$.") == "12"
    assert normalise_answer("50%") == "50"
    assert normalise_answer(r"\left( 1, 2 \right)") == "(1,2)"
