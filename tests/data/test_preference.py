"""Preference formats → PreferencePair: pairs, implicit prompts, HH transcripts, K-wise rankings, bad rows."""

import json
import math

import pytest

from lightalign.data.preference import (
    InvalidPreference,
    load_preference_pairs,
    load_preference_splits,
    parse_hh_transcript,
    prompt_key,
    split_held_out,
    to_preference_pairs,
)
from lightalign.errors import DataError

USER = {"role": "user", "content": "What is 7 + 5?"}


def _pairs(row, fmt="auto"):
    pairs, tied = to_preference_pairs(row, "t.jsonl:1", fmt)
    return pairs, tied


def test_explicit_prompt_strings():
    (pair,), tied = _pairs({"prompt": "What is 7 + 5?", "chosen": "12.", "rejected": "13."})
    assert pair.prompt == [USER] and (pair.chosen, pair.rejected) == ("12.", "13.")
    assert pair.group is None and pair.weight == 1.0 and tied == 0 and pair.origin == "t.jsonl:1"


def test_explicit_prompt_message_lists():
    row = {"prompt": [{"role": "system", "content": "Be brief."}, USER],
           "chosen": [{"role": "assistant", "content": "12."}], "rejected": [{"role": "assistant", "content": "13."}]}
    (pair,), _ = _pairs(row)
    assert [m["role"] for m in pair.prompt] == ["system", "user"] and pair.chosen == "12."


def test_implicit_prompt_is_the_shared_prefix():
    turns = [USER, {"role": "assistant", "content": "12."}, {"role": "user", "content": "And 7 + 6?"}]
    row = {"chosen": turns + [{"role": "assistant", "content": "13."}],
           "rejected": turns + [{"role": "assistant", "content": "14."}]}
    (pair,), _ = _pairs(row)
    assert pair.prompt == turns and (pair.chosen, pair.rejected) == ("13.", "14.")


def test_hh_transcripts_split_into_prompt_and_final_answers():
    shared = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: What is 7 + 5?"
    row = {"chosen": shared + "\n\nAssistant: It is 12.", "rejected": shared + "\n\nAssistant: No idea."}
    (pair,), _ = _pairs(row)
    assert pair.prompt == [{"role": "user", "content": "Hi there"},
                           {"role": "assistant", "content": "Hello! How can I help?"},
                           {"role": "user", "content": "What is 7 + 5?"}]
    assert (pair.chosen, pair.rejected) == ("It is 12.", "No idea.")
    assert parse_hh_transcript("\n\nHuman: a\n\nAssistant:", "o", "chosen")[-1] == {"role": "assistant",
                                                                                     "content": ""}


def test_ranking_expands_to_all_pairs_with_group_weights():
    row = {"prompt": "Q?", "responses": ["ok", "best", "bad", "good"], "ranking": [1, 3, 0, 2]}
    pairs, tied = to_preference_pairs(row, "r.jsonl:7", group=5)
    assert len(pairs) == 6 == math.comb(4, 2) and tied == 0
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("best", "good"), ("best", "ok"), ("best", "bad"), ("good", "ok"), ("good", "bad"), ("ok", "bad")]
    assert all(p.group == 5 and p.weight == pytest.approx(1 / 6) for p in pairs)
    assert sum(p.weight for p in pairs) == pytest.approx(1.0)  # every prompt weighs the same in total


def test_explicit_ties_form_no_pair_and_are_counted():
    row = {"prompt": "Q?", "responses": ["a", "b", "c"], "ranking": [2, [0, 1]]}
    pairs, tied = to_preference_pairs(row, "r.jsonl:1")
    assert [(p.chosen, p.rejected) for p in pairs] == [("c", "a"), ("c", "b")]
    assert tied == 1 and all(p.weight == pytest.approx(0.5) for p in pairs)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"prompt": "Q?", "chosen": "12.", "rejected": " 12. "}, "identical"),
        ({"prompt": "Q?", "chosen": "  ", "rejected": "13."}, "empty_answer"),
        ({"prompt": "Q?", "responses": ["a", "b", "c"], "ranking": [0, 0, 1]}, "bad_ranking"),
        ({"prompt": "Q?", "responses": ["a", "b", "c"], "ranking": [0, 1]}, "bad_ranking"),
        ({"prompt": "Q?", "responses": ["a", "b"], "ranking": [0, 2]}, "bad_ranking"),
        ({"prompt": "Q?", "responses": ["a", "b"], "ranking": "01"}, "bad_ranking"),
        ({"prompt": "Q?", "responses": ["a", "b"], "ranking": [True, 0]}, "bad_ranking"),
        ({"prompt": "Q?", "responses": ["a", ""], "ranking": [0, 1]}, "empty_answer"),
        ({"prompt": "Q?", "responses": ["a", "b", "a"], "ranking": [0, 1, 2]}, "tie"),
        ({"prompt": "Q?", "responses": ["a", "b"], "ranking": [[0, 1]]}, "tie"),
        ({"chosen": "\n\nHuman: Hi\n\nAssistant: Yes.", "rejected": "\n\nHuman: Hey\n\nAssistant: No."},
         "prefix_mismatch"),
        ({"chosen": "\n\nHuman: Hi\n\nAssistant: Yes.", "rejected": "\n\nHuman: Hi\n\nAssistant:"}, "empty_answer"),
        ({"chosen": "\n\nHuman: Hi\n\nAssistant: Yes.\n\nHuman: ok", "rejected": "\n\nHuman: Hi\n\nAssistant: No."},
         "no_answer"),
        ({"chosen": [USER, {"role": "assistant", "content": "a"}],
          "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]},
         "prefix_mismatch"),
    ],
)
def test_bad_rows_raise_naming_origin_and_reason(row, reason):
    with pytest.raises(InvalidPreference) as err:
        to_preference_pairs(row, "bad.jsonl:3")
    assert err.value.reason == reason
    assert str(err.value).startswith("bad.jsonl:3: ")


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "Q?", "answer": "12."},  # no preference fields at all
        {"chosen": "12.", "rejected": "13."},  # strings without a prompt and not HH transcripts
        {"prompt": "Q?", "responses": "a", "ranking": [0]},  # responses not a list
    ],
)
def test_unrecognised_rows_always_raise(row, tmp_path):
    with pytest.raises(DataError, match="t.jsonl:1"):
        to_preference_pairs(row, "t.jsonl:1")
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError):  # a wrong format is never "skipped" row by row
        load_preference_pairs(str(path), invalid="skip")


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_load_raises_at_the_first_bad_row_with_file_and_line(tmp_path):
    source = _write(tmp_path / "p.jsonl", [{"prompt": "Q", "chosen": "a", "rejected": "b"},
                                           {"prompt": "Q", "chosen": "a", "rejected": "a"}])
    with pytest.raises(InvalidPreference, match=r"p\.jsonl:2: chosen and rejected are the same"):
        load_preference_pairs(source)


def test_load_skips_bad_rows_when_asked_and_counts_them(tmp_path):
    source = _write(tmp_path / "p.jsonl", [
        {"prompt": "Q", "chosen": "a", "rejected": "b"},
        {"prompt": "Q", "chosen": "a", "rejected": "a"},
        {"prompt": "Q", "responses": ["x", "y"], "ranking": [0, 0]},
        {"prompt": "Q", "responses": ["x", "y", "z"], "ranking": [[0, 1], 2]},
    ])
    pairs, report = load_preference_pairs(source, invalid="skip")
    assert len(pairs) == 3 and report.rows == 4 and report.groups == 2 and report.tied_pairs == 1
    assert report.skipped == {"identical": 1, "bad_ranking": 1}
    assert report.skipped_origins == [f"{source}:2", f"{source}:3"]
    metrics = report.as_metrics("train")
    assert metrics["train_invalid_rows"] == 2 and metrics["train_invalid_identical"] == 1
    assert "1 identical" in report.summary()


def test_nothing_usable_is_an_error(tmp_path):
    source = _write(tmp_path / "p.jsonl", [{"prompt": "Q", "chosen": "a", "rejected": "a"}])
    with pytest.raises(DataError, match="no usable preference pairs"):
        load_preference_pairs(source, invalid="skip")


def test_held_out_split_keeps_whole_prompts_apart():
    pairs = []
    for group in range(20):
        row = {"prompt": f"Q{group}?", "responses": ["a", "b", "c"], "ranking": [0, 1, 2]}
        pairs += to_preference_pairs(row, f"r:{group}", group=group)[0]
    train, held = split_held_out(pairs, 0.25, seed=1)
    assert len(held) == 5 * 3 and len(train) == 15 * 3
    assert not {prompt_key(p) for p in train} & {prompt_key(p) for p in held}
    assert split_held_out(pairs, 0.25, seed=1) == (train, held)  # deterministic
    assert split_held_out(pairs, 0.0) == (pairs, [])


def test_demo_rankings_load_as_groups_of_six_pairs():
    splits = load_preference_splits("demo:rankings", None, limit=20, eval_fraction=0.1, eval_limit=1)
    assert splits.train_report.rows == 20 and len(splits.train) == 18 * 6 and len(splits.held_out) == 6
    assert {p.group for p in splits.held_out} == {splits.held_out[0].group}
    assert splits.as_metrics()["eval_prompts"] == 1
