"""Prompts in a seeded order that a resumed run continues exactly."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..api.spec import PromptSource
from .loading import DataConfigError, load_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    text: str
    label: Any = None


class PromptDataset:
    """Rows of `source` formatted as prompts, served by `next_batch(n)`.

    Order: a permutation of the rows seeded with seed + epoch (identity when shuffle is off);
    batches run across epoch boundaries. Rows load on first use (`preflight()`, `num_rows`,
    `next_batch`). `max_prompt_length` is not applied here: the generation engine
    left-truncates prompts, so the dataset stays independent of any engine.
    """

    def __init__(
        self,
        source: PromptSource,
        tokenizer: Any | None,
        max_prompt_length: int,
        seed: int,
        shuffle: bool,
        field: str = "spec.data.prompts",
    ) -> None:
        self.source = source
        self.tokenizer = tokenizer
        self.max_prompt_length = max_prompt_length
        self.seed = seed
        self.shuffle = shuffle
        self.field = field
        self.epoch = 0
        self.position = 0
        self._inputs: list[Any] | None = None
        self._labels: list[Any] | None = None
        self._order: np.ndarray | None = None
        self.skipped_rows = 0  # rows dropped at load time (invalidRows: skip)

    # ---------------------------------------------------------------- loading

    def preflight(self) -> None:
        """Load the rows and check the keys and the template: DataConfigError naming the field."""
        self._load()

    @property
    def num_rows(self) -> int:
        self._load()
        assert self._inputs is not None
        return len(self._inputs)

    def _load(self) -> None:
        if self._inputs is not None:
            return
        src = self.source
        rows = self._checked_rows([("labelKey", src.label_key)] if src.label_key is not None else [])
        inputs = list(rows[src.input_key])
        labels = list(rows[src.label_key]) if src.label_key is not None else [None] * len(inputs)
        self._inputs, self._labels = self._valid_rows(inputs, labels)

    def row_error(self, raw: Any, label: Any, row: int) -> str | None:
        """What is wrong with one row (its field path first), or None."""
        error = self._input_error(raw, row)
        if error is None and self.source.label_key is not None and label is None:
            error = f"{self.field}.labelKey: row {row} column '{self.source.label_key}' is empty"
        return error

    def _valid_rows(self, inputs: list[Any], labels: list[Any]) -> tuple[list[Any], list[Any]]:
        """Every row checked before the first step (a bad row drawn hours into a run would end it
        then): DataConfigError naming the first bad row and field, or, with invalidRows: skip, the
        rows without the bad ones and a warning saying how many went."""
        bad = [(i, error) for i in range(len(inputs)) if (error := self.row_error(inputs[i], labels[i], i))]
        self.skipped_rows = len(bad)
        if not bad:
            return inputs, labels
        first = bad[0][1]
        if self.source.invalid_rows == "fail":
            raise DataConfigError(
                f"{first} ({len(bad)} of {len(inputs)} rows are invalid; "
                f"{self.field}.invalidRows: skip drops them instead)"
            )
        if len(bad) == len(inputs):
            raise DataConfigError(f"{self.field}: all {len(inputs)} rows are invalid; the first: {first}")
        dropped = {i for i, _ in bad}
        log.warning(
            "%s: skipped %d of %d rows (invalidRows: skip); the first: %s",
            self.field,
            len(bad),
            len(inputs),
            first,
        )
        keep = [i for i in range(len(inputs)) if i not in dropped]
        return [inputs[i] for i in keep], [labels[i] for i in keep]

    def _checked_rows(self, columns: list[tuple[str, str]]) -> Any:
        """The source's rows (at most maxSamples) after the checks every dataset shares: a chat
        template the tokenizer has, the input column and `columns` ((field key, column) pairs)
        present, at least one row. DataConfigError naming the field otherwise."""
        src = self.source
        if src.chat_template and (
            self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None)
        ):
            raise DataConfigError(
                f"{self.field}.chatTemplate: the tokenizer has no chat template; "
                "set chatTemplate: false (optionally with an inputTemplate)"
            )
        rows = load_rows(src, self.field)
        names = list(rows.column_names)
        for key, column in [("inputKey", src.input_key), *columns]:
            if column not in names:
                raise DataConfigError(
                    f"{self.field}.{key}: column '{column}' not found; columns: {', '.join(names) or '(none)'}"
                )
        if len(rows) == 0:
            raise DataConfigError(f"{self.field}: no rows in {src.path or src.dataset}")
        if src.max_samples is not None and src.max_samples < len(rows):
            rows = rows.select(range(src.max_samples))
        return rows

    # ---------------------------------------------------------------- formatting

    def _input_error(self, raw: Any, row: int) -> str | None:
        src = self.source
        if isinstance(raw, str) or (src.chat_template and _is_messages(raw)):
            return None
        expected = "a string (or a list of chat messages with chatTemplate: true)"
        if isinstance(raw, list) and not src.chat_template:
            expected = "a string (a list of chat messages needs chatTemplate: true)"
        return f"{self.field}.inputKey: row {row} column '{src.input_key}' holds {type(raw).__name__}, expected {expected}"

    def format(self, raw: Any, row: int) -> str:
        """The prompt text of one row's input: chat template, input template, or as is."""
        src = self.source
        error = self._input_error(raw, row)
        if error is not None:
            raise DataConfigError(error)
        is_messages = _is_messages(raw)
        if src.chat_template:
            messages = raw if is_messages else [{"role": "user", "content": raw}]
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if src.input_template is not None:
            # replace, not str.format: prompts and templates are full of literal braces (LaTeX).
            return src.input_template.replace("{input}", raw)
        return raw

    # ---------------------------------------------------------------- order

    def _permutation(self, epoch: int) -> np.ndarray:
        n = self.num_rows
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng(self.seed + epoch).permutation(n)

    def next_batch(self, n: int) -> list[Prompt]:
        """The next n prompts; wraps into the next epoch (reshuffled) as often as needed."""
        if n < 1:
            raise ValueError(f"batch size must be >= 1, got {n}")
        self._load()
        assert self._inputs is not None and self._labels is not None
        batch: list[Prompt] = []
        while len(batch) < n:
            if self._order is None:
                self._order = self._permutation(self.epoch)
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            row = int(self._order[self.position])
            self.position += 1
            batch.append(Prompt(text=self.format(self._inputs[row], row), label=self._labels[row]))
        return batch

    # ---------------------------------------------------------------- resume

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_rows": self.num_rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` was taken. A different seed or row count cannot reproduce the
        order; the run continues in the new order and says so."""
        if state.get("seed", self.seed) != self.seed:
            log.warning(
                "%s: checkpoint was taken with seed %s, now %s: prompt order differs",
                self.field,
                state["seed"],
                self.seed,
            )
        rows = state.get("num_rows", self.num_rows)
        if rows != self.num_rows:
            log.warning(
                "%s: checkpoint saw %s rows, the data now has %s: prompt order differs",
                self.field,
                rows,
                self.num_rows,
            )
        self.epoch = int(state["epoch"])
        self.position = min(int(state["position"]), self.num_rows)
        self._order = None


def _is_messages(raw: Any) -> bool:
    """A chat: a list of {"role": ..., "content": ...} messages."""
    return isinstance(raw, list) and all(isinstance(m, dict) and "content" in m for m in raw)
