"""PromptDataset: local files through HF datasets, keys, templates, order and resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_trainer.api.spec import PromptSource
from rlhf_trainer.data import DataConfigError, PromptDataset

ROWS = [{"question": f"q{i}", "answer": str(i * i)} for i in range(10)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def source(path: Path, **fields: Any) -> PromptSource:
    return PromptSource.model_validate(
        {"path": str(path), "inputKey": "question", "labelKey": "answer", **fields}
    )


def dataset(src: PromptSource, tokenizer: Any = None, seed: int = 3, shuffle: bool = True) -> PromptDataset:
    return PromptDataset(src, tokenizer, max_prompt_length=64, seed=seed, shuffle=shuffle)


def test_jsonl_in_file_order_without_shuffle(tmp_path: Path) -> None:
    data = dataset(source(write_jsonl(tmp_path / "p.jsonl", ROWS)), shuffle=False)
    assert data.num_rows == 10
    batch = data.next_batch(3)
    assert [(p.text, p.label) for p in batch] == [("q0", "0"), ("q1", "1"), ("q2", "4")]


def test_parquet_and_a_directory_of_parquet_files(tmp_path: Path) -> None:
    write_parquet(tmp_path / "a.parquet", ROWS[:4])
    write_parquet(tmp_path / "b.parquet", ROWS[4:])
    whole = dataset(source(tmp_path), shuffle=False)
    assert [p.text for p in whole.next_batch(10)] == [r["question"] for r in ROWS]
    single = dataset(source(tmp_path / "b.parquet"), shuffle=False)
    assert single.num_rows == 6


def test_missing_input_key_names_the_field_and_the_columns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    data = dataset(source(path, inputKey="prompt"))
    with pytest.raises(DataConfigError) as err:
        data.preflight()
    assert (
        str(err.value) == "spec.data.prompts.inputKey: column 'prompt' not found; columns: question, answer"
    )
    with pytest.raises(DataConfigError, match=r"^spec\.data\.prompts\.labelKey: column 'label' not found"):
        dataset(source(path, labelKey="label")).preflight()


def test_missing_path_and_wrong_format_name_the_path_field(tmp_path: Path) -> None:
    with pytest.raises(DataConfigError, match=r"^spec\.data\.prompts\.path: .*absent\.jsonl does not exist"):
        dataset(source(tmp_path / "absent.jsonl")).preflight()
    (tmp_path / "p.csv").write_text("question,answer\n")
    with pytest.raises(
        DataConfigError, match=r"^spec\.data\.prompts\.path: .* is not a \.jsonl, \.json or \.parquet"
    ):
        dataset(source(tmp_path / "p.csv")).preflight()


def test_non_string_input_is_reported_with_its_row(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": 5, "answer": "x"}])
    with pytest.raises(
        DataConfigError, match=r"inputKey: row 0 column 'question' holds int, expected a string"
    ):
        dataset(source(path)).preflight()


def test_no_label_key_gives_none_labels(tmp_path: Path) -> None:
    src = PromptSource.model_validate(
        {"path": str(write_jsonl(tmp_path / "p.jsonl", ROWS)), "inputKey": "question"}
    )
    assert [p.label for p in dataset(src).next_batch(4)] == [None] * 4


def test_input_template_replaces_input_and_keeps_other_braces(tmp_path: Path) -> None:
    src = source(write_jsonl(tmp_path / "p.jsonl", ROWS), inputTemplate=r"Q: {input}. Answer in \boxed{}.")
    assert dataset(src, shuffle=False).next_batch(1)[0].text == r"Q: q0. Answer in \boxed{}."


def test_chat_template_from_the_tokenizer(tmp_path: Path, chat_tokenizer: Any) -> None:
    src = source(write_jsonl(tmp_path / "p.jsonl", ROWS), chatTemplate=True)
    assert dataset(src, chat_tokenizer, shuffle=False).next_batch(1)[0].text == "<|user|>q0\n<|assistant|>"


def test_chat_messages_column_goes_through_the_template(tmp_path: Path, chat_tokenizer: Any) -> None:
    rows = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}]
    src = PromptSource.model_validate(
        {"path": str(write_jsonl(tmp_path / "m.jsonl", rows)), "inputKey": "messages", "chatTemplate": True}
    )
    text = dataset(src, chat_tokenizer).next_batch(1)[0].text
    assert text == "<|system|>be brief\n<|user|>hi\n<|assistant|>"


def test_chat_template_without_one_in_the_tokenizer_is_an_error(tmp_path: Path, tokenizer: Any) -> None:
    src = source(write_jsonl(tmp_path / "p.jsonl", ROWS), chatTemplate=True)
    with pytest.raises(
        DataConfigError, match=r"^spec\.data\.prompts\.chatTemplate: the tokenizer has no chat template"
    ):
        dataset(src, tokenizer).preflight()


def test_max_samples_keeps_the_first_rows(tmp_path: Path) -> None:
    data = dataset(source(write_jsonl(tmp_path / "p.jsonl", ROWS), maxSamples=4), seed=1)
    assert data.num_rows == 4
    seen = {p.text for p in data.next_batch(8)}
    assert seen == {"q0", "q1", "q2", "q3"}


def test_shuffle_is_deterministic_per_seed_and_reshuffles_each_epoch(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    first = [p.text for p in dataset(source(path), seed=5).next_batch(20)]
    again = [p.text for p in dataset(source(path), seed=5).next_batch(20)]
    other = [p.text for p in dataset(source(path), seed=6).next_batch(20)]
    assert first == again
    assert first != other
    epoch0, epoch1 = first[:10], first[10:]
    assert (
        sorted(epoch0) == sorted(epoch1) == sorted(r["question"] for r in ROWS)
    )  # each epoch sees every row once
    assert epoch0 != epoch1
    assert epoch0 != [r["question"] for r in ROWS]


def test_state_dict_round_trip_resumes_at_the_same_prompt(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    reference = dataset(source(path))
    expected = [p.text for p in reference.next_batch(27)]

    run = dataset(source(path))
    before = [p.text for p in run.next_batch(13)]  # crosses into epoch 1
    state = json.loads(json.dumps(run.state_dict()))  # as stored in a checkpoint
    assert state == {"epoch": 1, "position": 3, "seed": 3, "num_rows": 10}

    resumed = dataset(source(path))
    resumed.load_state_dict(state)
    after = [p.text for p in resumed.next_batch(14)]
    assert before + after == expected


def test_batches_wrap_past_an_epoch_larger_than_the_data(tmp_path: Path) -> None:
    data = dataset(source(write_jsonl(tmp_path / "p.jsonl", ROWS[:3])), shuffle=False)
    assert [p.text for p in data.next_batch(7)] == ["q0", "q1", "q2", "q0", "q1", "q2", "q0"]
    assert data.state_dict()["epoch"] == 2


def test_every_row_is_checked_at_load_and_the_first_bad_one_is_named(tmp_path: Path) -> None:
    rows = [*ROWS[:5], {"question": "q5", "answer": None}, {"question": 7, "answer": "49"}, *ROWS[7:]]
    data = dataset(source(write_jsonl(tmp_path / "p.jsonl", rows)))
    with pytest.raises(DataConfigError) as err:
        data.preflight()  # before the first step, not when row 5 is drawn
    assert str(err.value) == (
        "spec.data.prompts.labelKey: row 5 column 'answer' is empty "
        "(2 of 10 rows are invalid; spec.data.prompts.invalidRows: skip drops them instead)"
    )


def test_invalid_rows_skip_drops_bad_rows_and_counts_them(tmp_path: Path, caplog) -> None:
    rows = [*ROWS[:5], {"question": "q5", "answer": None}, {"question": 7, "answer": "49"}, *ROWS[7:]]
    data = dataset(source(write_jsonl(tmp_path / "p.jsonl", rows), invalidRows="skip"), shuffle=False)
    with caplog.at_level("WARNING"):
        assert data.num_rows == 8
    assert data.skipped_rows == 2
    assert "skipped 2 of 10 rows" in caplog.text
    assert [p.text for p in data.next_batch(8)] == [f"q{i}" for i in (0, 1, 2, 3, 4, 7, 8, 9)]
    all_bad = dataset(
        source(write_jsonl(tmp_path / "b.jsonl", [{"question": 1, "answer": "1"}]), invalidRows="skip")
    )
    with pytest.raises(DataConfigError, match=r"^spec\.data\.prompts: all 1 rows are invalid"):
        all_bad.preflight()
