"""Reading prompt rows from local files or a named HF dataset."""

from __future__ import annotations

import os
from typing import Any

from ..api.spec import PromptSource

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataConfigError(ValueError):
    """The prompt data cannot be used as declared; the message starts with the field path."""


def data_files(path: str, field: str) -> tuple[str, list[str]]:
    """(datasets builder name, files) for a file or a directory of .jsonl/.json/.parquet files."""
    if not os.path.exists(path):
        raise DataConfigError(f"{field}: {path} does not exist")
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, name)
            for name in os.listdir(path)
            if os.path.splitext(name)[1] in FORMATS and os.path.isfile(os.path.join(path, name))
        )
        if not files:
            raise DataConfigError(f"{field}: directory {path} holds no .jsonl, .json or .parquet file")
    else:
        files = [path]
    builders = {FORMATS.get(os.path.splitext(f)[1]) for f in files}
    if None in builders:
        raise DataConfigError(f"{field}: {path} is not a .jsonl, .json or .parquet file")
    if len(builders) > 1:
        raise DataConfigError(f"{field}: directory {path} mixes JSON and Parquet files; use one format")
    return builders.pop(), files  # type: ignore[return-value]


def load_rows(source: PromptSource, field: str) -> Any:
    """A `datasets.Dataset` of the source's rows, before maxSamples."""
    import datasets

    if source.path is not None:
        builder, files = data_files(source.path, f"{field}.path")
        try:
            return datasets.load_dataset(builder, data_files=files, split="train")
        except Exception as exc:
            raise DataConfigError(
                f"{field}.path: cannot read {source.path}: {type(exc).__name__}: {exc}"
            ) from exc
    assert source.dataset is not None
    try:
        return datasets.load_dataset(source.dataset, split=source.split)
    except Exception as exc:
        raise DataConfigError(
            f"{field}.dataset: cannot load '{source.dataset}' split '{source.split}': {type(exc).__name__}: {exc}"
        ) from exc
