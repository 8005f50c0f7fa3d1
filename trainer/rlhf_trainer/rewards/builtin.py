"""Built-in verifiable rewards, used as `function: rlhf_trainer.rewards.builtin:<name>`.

Each takes (prompts, completions, labels) and returns one float per completion: 1.0 or 0.0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

_BOXED = ("\\boxed{", "\\fbox{")


def _require_labels(labels: Sequence[Any] | None, n: int, fn: str) -> Sequence[Any]:
    if labels is None or len(labels) != n or any(label is None for label in labels):
        raise ValueError(f"{fn} compares with labels: set spec.data.prompts.labelKey")
    return labels


def exact_match(
    prompts: Sequence[str], completions: Sequence[str], labels: Sequence[Any] | None
) -> list[float]:
    """1.0 when the stripped completion equals the stripped label."""
    labels = _require_labels(labels, len(completions), "exact_match")
    return [float(c.strip() == str(label).strip()) for c, label in zip(completions, labels, strict=True)]


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), nested braces included; None if absent
    or unclosed."""
    start = max(text.rfind(marker) for marker in _BOXED)
    if start < 0:
        return None
    open_at = text.index("{", start)
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
    return None


def normalise_answer(answer: str) -> str:
    """Canonical form of a short answer: no whitespace, $, \\text{}, \\left/\\right, trailing
    period; numbers written one way (`1,000.50` -> `2001/2`, `\\frac{1}{2}` -> `1/2`, `2.0` -> `2`)."""
    s = answer.strip()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(left|right|!|,|;|:)", "", s)
    s = re.sub(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}", r"\1/\2", s)
    s = re.sub(r"\s+", "", s).replace("$", "").rstrip(".")
    number = _as_number(s)
    return s if number is None else _format_number(number)


def _as_number(s: str) -> Fraction | None:
    candidate = s[:-1] if s.endswith("%") else s
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", candidate):
        candidate = candidate.replace(",", "")
    if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)(/[-+]?\d+(\.\d*)?)?", candidate):
        return None
    try:
        return Fraction(candidate)
    except (ValueError, ZeroDivisionError):
        return None


def _format_number(number: Fraction) -> str:
    return str(number.numerator) if number.denominator == 1 else f"{number.numerator}/{number.denominator}"


def _label_answer(label: Any) -> str:
    text = str(label)
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    # GSM8K-style labels end with "#### <answer>".
    return text.rsplit("####", 1)[-1] if "####" in text else text


def boxed_answer(
    prompts: Sequence[str], completions: Sequence[str], labels: Sequence[Any] | None
) -> list[float]:
    """1.0 when the last \\boxed{} of the completion matches the label after normalisation."""
    labels = _require_labels(labels, len(completions), "boxed_answer")
    scores = []
    for completion, label in zip(completions, labels, strict=True):
        answer = last_boxed(completion)
        match = answer is not None and normalise_answer(answer) == normalise_answer(_label_answer(label))
        scores.append(float(match))
    return scores


def boxed_format(
    prompts: Sequence[str], completions: Sequence[str], labels: Sequence[Any] | None = None
) -> list[float]:
    """1.0 when the completion contains a closed \\boxed{...}."""
    return [float(last_boxed(c) is not None) for c in completions]
