"""Fixtures of the trainer I/O tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .helpers import CHAT_TEMPLATE, char_tokenizer


@pytest.fixture
def tokenizer() -> Any:
    return char_tokenizer()


@pytest.fixture
def chat_tokenizer() -> Any:
    return char_tokenizer(CHAT_TEMPLATE)


@pytest.fixture
def in_tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path
