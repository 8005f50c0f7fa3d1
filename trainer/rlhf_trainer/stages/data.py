"""Examples of the offline stages, in a seeded order that a resumed run continues exactly.

Each row's prompt is formatted as the RL prompts are (chat template, input template or as is);
the other columns named by the stage's keys (response; chosen/rejected; completion/label) come
with it as the example's `columns`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api.spec import PromptSource
from ..api.stages import STAGE_COLUMNS
from ..data import PromptDataset

_ATTRIBUTE = {
    "responseKey": "response_key",
    "chosenKey": "chosen_key",
    "rejectedKey": "rejected_key",
    "completionKey": "completion_key",
    "labelKey": "label_key",
    "inputKey": "input_key",
}


@dataclass(frozen=True)
class Example:
    prompt: str
    """The formatted prompt text."""
    columns: dict[str, Any]
    """The stage's other columns by their role: response, chosen, rejected, completion, label."""


def stage_columns(stage: str, source: PromptSource) -> dict[str, tuple[str, str]]:
    """{role: (wire key, column name)} of the columns `stage` reads besides the prompt."""
    out = {}
    for key, default in STAGE_COLUMNS[stage]:
        if key == "inputKey":
            continue
        role = key.removesuffix("Key")
        out[role] = (key, getattr(source, _ATTRIBUTE[key]) or default)
    return out


class ExampleDataset(PromptDataset):
    """A PromptDataset whose rows carry the stage's columns; `next_examples(n)` serves them."""

    def __init__(
        self, stage: str, source: PromptSource, tokenizer: Any, seed: int, shuffle: bool, field: str
    ) -> None:
        super().__init__(source, tokenizer, max_prompt_length=0, seed=seed, shuffle=shuffle, field=field)
        self.stage = stage
        self.columns = stage_columns(stage, source)

    def _load(self) -> None:
        if self._inputs is not None:
            return
        src = self.source
        rows = self._checked_rows(list(self.columns.values()))
        inputs = list(rows[src.input_key])
        values = {role: list(rows[column]) for role, (_, column) in self.columns.items()}
        labels = [{role: values[role][i] for role in values} for i in range(len(inputs))]
        self._inputs, self._labels = self._valid_rows(inputs, labels)

    def row_error(self, raw: Any, label: Any, row: int) -> str | None:
        error = self._input_error(raw, row)
        if error is not None:
            return error
        for role, (key, column) in self.columns.items():
            expected = bool if role == "label" else str
            if not isinstance(label[role], expected):
                return (
                    f"{self.field}.{key}: row {row} column '{column}' holds "
                    f"{type(label[role]).__name__}, expected {expected.__name__}"
                )
        return None

    def next_examples(self, n: int) -> list[Example]:
        return [Example(prompt=p.text, columns=p.label) for p in self.next_batch(n)]

    def all_examples(self) -> list[Example]:
        """Every row once, in file order (evaluation)."""
        self._load()
        assert self._inputs is not None and self._labels is not None
        return [Example(self.format(raw, i), self._labels[i]) for i, raw in enumerate(self._inputs)]
