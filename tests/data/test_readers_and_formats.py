"""Every supported input format normalises; every bad input gives one error naming file, line and field."""

import json

import pytest

from lightalign.data import load_lm_examples, load_prompt_examples
from lightalign.data.formats import to_lm_example
from lightalign.data.types import Conversation, PlainText
from lightalign.errors import DataError


def _jsonl(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


ANSWER = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]


@pytest.mark.parametrize(
    "row",
    [
        {"messages": ANSWER},
        {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]},
        {"prompt": "Q?", "completion": "A."},
        {"prompt": [{"role": "user", "content": "Q?"}], "completion": [{"role": "assistant", "content": "A."}]},
        {"instruction": "Q?", "input": "", "output": "A."},
    ],
    ids=["messages", "sharegpt", "prompt_completion", "conversational_pc", "alpaca"],
)
def test_lm_formats_normalise_to_one_conversation(row):
    assert to_lm_example(row, "x:1") == Conversation(ANSWER, "x:1")


def test_alpaca_input_is_appended_and_text_is_plain():
    conv = to_lm_example({"instruction": "Translate", "input": "I have a pen.", "output": "J'ai un stylo."}, "x:1")
    assert conv.messages[0]["content"] == "Translate\n\nI have a pen."
    assert to_lm_example({"text": "raw"}, "x:2") == PlainText("raw", "x:2")


def test_csv_json_parquet_and_jsonl_read_the_same(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "Q1", "completion": "A1"}, {"prompt": "Q2", "completion": "A2"}]
    _jsonl(tmp_path, rows)
    (tmp_path / "d.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "d.csv").write_text("prompt,completion\nQ1,A1\nQ2,A2\n", encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    loaded = [load_lm_examples(str(tmp_path / f"d.{ext}")) for ext in ("jsonl", "json", "csv", "parquet")]
    assert all([e.messages for e in got] == [e.messages for e in loaded[0]] for got in loaded)
    assert loaded[2][1].origin.endswith("d.csv:3")


def test_prompts_from_messages_drop_the_answer(tmp_path):
    path = _jsonl(tmp_path, [{"messages": ANSWER}, {"prompt": "P"}])
    prompts = load_prompt_examples(str(path))
    assert prompts[0].prompt == ANSWER[:1] and prompts[1].prompt == [{"role": "user", "content": "P"}]


def test_demo_source_is_shipped():
    assert len(load_lm_examples("demo:sft")) >= 100
    assert isinstance(load_lm_examples("demo:text", limit=1)[0], PlainText)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (['{"prompt": "a", "completion": "b"}', '{"prompt": "a", "completion": '], r"d\.jsonl:2: malformed JSON"),
        ([{"prompt": "a", "completon": "b"}], r"d\.jsonl:1: unrecognised row \(fields: completon, prompt\)"),
        ([{"messages": [{"role": "user", "content": "q"}]}], r"d\.jsonl:1: field 'messages': no assistant turn"),
        ([{"prompt": "q", "completion": ""}], r"d\.jsonl:1: field 'prompt_completion': an assistant answer is empty"),
        ([{"instruction": "q", "output": 3}], r"d\.jsonl:1: field 'output': expected a string, got int"),
        ([{"messages": [{"role": "bot", "content": "x"}]}], r"field 'messages\[0\]': role 'bot' is not one of"),
        ([{"text": None}], r"d\.jsonl:1: field 'text': missing"),
        (["[1, 2]"], r"d\.jsonl:1: expected a JSON object per line, got list"),
    ],
    ids=["malformed", "misspelled", "no_answer", "empty_answer", "wrong_type", "bad_role", "null", "not_object"],
)
def test_bad_rows_name_file_line_and_field(tmp_path, lines, expected):
    with pytest.raises(DataError, match=expected):
        load_lm_examples(str(_jsonl(tmp_path, lines)))


def test_non_utf8_empty_and_missing_files(tmp_path):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl:2: not valid UTF-8"):
        load_lm_examples(str(bad))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="the file is empty"):
        load_lm_examples(str(empty))
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        load_lm_examples(str(tmp_path / "nope.jsonl"))
