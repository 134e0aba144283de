"""The bad-input corpus (tests/data/bad/): every malformed input gives one line naming the file, line and field.

Most cases go straight to the data layer (fast); a few representative ones run the command end to end and
check the user-visible contract: one ``lightalign: error: ...`` line on stderr, exit code 2 (Hydra's own
non-zero code for config errors it catches first), and no run directory that looks finished (no
``manifest.json``, no ``adapter/``). Data errors stop a recipe before it loads the model, so those runs are cheap.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lightalign.cli import main as cli
from lightalign.data import load_lm_examples, load_preference_pairs
from lightalign.data.tokenize import tokenize_lm_examples, tokenize_reward_groups
from lightalign.errors import DataError

BAD = Path(__file__).parent / "data" / "bad"

# file -> the error it must give, after "<path>" (a regex). Line numbers are part of the contract.
LM_CASES = {
    "sft-malformed.jsonl": r":2: malformed JSON at column \d+",
    "sft-truncated.jsonl": r":2: malformed JSON .*the file ends inside this row: is it truncated\?",
    "sft-truncated.json": r":1: malformed JSON at column \d+",
    "sft-misspelled-field.jsonl": r":2: unrecognised row \(fields: completon, prompt\)",
    "sft-missing-field.jsonl": r":1: field 'output': missing",
    "sft-wrong-type.jsonl": r":1: field 'output': expected a string, got int",
    "sft-wrong-type-completion.jsonl": r":1: field 'completion': expected a string or a list of messages, got int",
    "sft-empty-answer.jsonl": r":2: field 'prompt_completion': an assistant answer is empty",
    "sft-no-assistant-turn.jsonl": r":1: field 'messages': no assistant turn",
    "sft-not-an-object.jsonl": r":2: expected a JSON object per line, got list",
    "sft-latin1.jsonl": r":2: not valid UTF-8 \(byte \d+\); re-save the file as UTF-8",
    "sft-utf16.jsonl": r": not UTF-8 but UTF-16 .*re-save the file as UTF-8",
    "sft-utf16-no-bom.jsonl": r":1: holds NUL bytes: UTF-16 without a byte-order mark",
    "sft-extra-column.csv": r":3: more values than header columns",
    "truncated.parquet": r": cannot read Parquet: ",
    "empty.jsonl": r": the file is empty",
    "blank-lines.jsonl": r": the file is empty",
    "empty-list.json": r": no rows",
}
PREFERENCE_CASES = {
    "pref-identical.jsonl": r":2: chosen and rejected are the same answer: no preference",
    "pref-empty-answer.jsonl": r":1: field 'rejected': the answer is empty",
    "pref-missing-rejected.jsonl": r":1: field 'rejected': missing",
    "pref-misspelled-field.jsonl": r":1: unrecognised preference row \(fields: chosen, prompt, rejectd\)",
    "pref-wrong-type.jsonl": r":1: field 'rejected': expected a string or a list of messages, got int",
    "rank-not-permutation.jsonl": r":1: field 'ranking': \[0, 0, 2\] is not a permutation of the response indices",
    "rank-out-of-range.jsonl": r":1: field 'ranking': \[0, 2\] is not a permutation",
    "rank-tie-same-answer.jsonl": r":1: field 'ranking': responses 0 and 2 are the same answer but ranked differently",
    "rank-all-tied.jsonl": r":1: field 'ranking': every response is tied: no preference",
    "hh-prefix-mismatch.jsonl": r":1: chosen and rejected differ at turn 0, before their last answer",
    "hh-not-a-transcript.jsonl": r":1: field 'chosen': not an HH transcript",
}
# loaded without error: the data layer cannot know the length; tokenisation must refuse it
TOKENIZE_CASES = {"sft-overlong.jsonl"}


def _assert_one_line_naming(err: DataError, path: Path, expected: str) -> None:
    message = str(err)
    assert "\n" not in message and len(message) < 400, message
    assert re.match(re.escape(str(path)) + expected, message), message


def test_every_corpus_file_has_a_case():
    files = {path.name for path in BAD.iterdir()}
    assert files == set(LM_CASES) | set(PREFERENCE_CASES) | TOKENIZE_CASES


@pytest.mark.parametrize("name", sorted(LM_CASES))
def test_bad_sft_data_names_file_line_and_field(name):
    with pytest.raises(DataError) as err:
        load_lm_examples(str(BAD / name))
    _assert_one_line_naming(err.value, BAD / name, LM_CASES[name])


@pytest.mark.parametrize("name", sorted(PREFERENCE_CASES))
def test_bad_preference_data_names_file_line_and_field(name):
    with pytest.raises(DataError) as err:
        load_preference_pairs(str(BAD / name))
    _assert_one_line_naming(err.value, BAD / name, PREFERENCE_CASES[name])


def test_skipping_bad_preference_rows_counts_them():
    # the documented alternative to an error: the row is dropped and counted by reason, never silently
    pairs, report = load_preference_pairs(str(BAD / "pref-identical.jsonl"), invalid="skip")
    assert len(pairs) == 1 and report.skipped == {"identical": 1}
    assert report.skipped_origins == [f"{BAD / 'pref-identical.jsonl'}:2"]


def test_over_long_sample_is_refused_at_tokenisation(tiny_tokenizer):
    examples = load_lm_examples(str(BAD / "sft-overlong.jsonl"))
    with pytest.raises(DataError) as err:
        tokenize_lm_examples(tiny_tokenizer, examples, max_length=256)
    _assert_one_line_naming(err.value, BAD / "sft-overlong.jsonl", r":2: \d+ tokens > data.max_length=256; set "
                                                                     "data.overlong=truncate or data.overlong=skip")
    rows, report = tokenize_lm_examples(tiny_tokenizer, examples, max_length=256, overlong="skip")
    assert len(rows) == 1 and report.skipped == 1


def test_huge_lines(tmp_path, tiny_tokenizer):
    # Generated here rather than stored: a 150 kB valid row (300x data.max_length; bigger only costs tokenizer
    # time), a 2 MB line that is not JSON at all, and a ranking with one 100 kB answer.
    huge = tmp_path / "huge.jsonl"
    huge.write_text(json.dumps({"prompt": "Say it.", "completion": "ok " * 50_000}) + "\n", encoding="utf-8")
    examples = load_lm_examples(str(huge))
    with pytest.raises(DataError) as err:
        tokenize_lm_examples(tiny_tokenizer, examples, max_length=512)
    _assert_one_line_naming(err.value, huge, r":1: \d{6} tokens > data.max_length=512")

    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{"prompt": "a", "completion": "b"}\n' + "x" * 2_000_000 + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_lm_examples(str(garbage))
    _assert_one_line_naming(err.value, garbage, r":2: malformed JSON at column 1")  # the line itself is not echoed

    ranking = tmp_path / "ranking.jsonl"
    ranking.write_text(json.dumps({"prompt": "Q?", "responses": ["short.", "long " * 20_000], "ranking": [0, 1]})
                       + "\n", encoding="utf-8")
    pairs, _ = load_preference_pairs(str(ranking))
    with pytest.raises(DataError) as err:
        tokenize_reward_groups(tiny_tokenizer, pairs, max_length=512)
    _assert_one_line_naming(err.value, ranking, r":1: \d+ tokens > data.max_length=512")


def test_raw_unicode_line_separators_are_not_line_breaks(tmp_path):
    # JSON strings may hold U+2028 raw (json.dumps(..., ensure_ascii=False)); only "\n" ends a JSONL row.
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps({"prompt": "a\u2028b", "completion": "c\x85d"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    (example,) = load_lm_examples(str(path))
    assert example.messages[0]["content"] == "a\u2028b"


# ---- end to end: the command's one line, exit code, and no finished-looking run directory --------------------


@pytest.mark.parametrize(
    ("stage", "overrides", "expected"),
    [
        ("sft", ["data=jsonl", "data.train=BAD/sft-malformed.jsonl"], "sft-malformed.jsonl:2: malformed JSON"),
        ("sft", ["data=jsonl", "data.train=BAD/sft-utf16.jsonl"], "sft-utf16.jsonl: not UTF-8 but UTF-16"),
        ("sft", ["data=jsonl", "data.train=BAD/sft-overlong.jsonl", "data.max_length=256"],
         "sft-overlong.jsonl:2: "),
        ("sft", ["data=jsonl", "data.train=BAD/empty.jsonl"], "empty.jsonl: the file is empty"),
        ("reward", ["data=jsonl", "data.train=BAD/rank-not-permutation.jsonl"],
         "rank-not-permutation.jsonl:1: field 'ranking'"),
        ("dpo", ["data=jsonl", "data.train=BAD/hh-prefix-mismatch.jsonl"], "hh-prefix-mismatch.jsonl:1: chosen and"),
        ("reward", ["data.overlong=sometimes"], "data.overlong='sometimes' is not one of error, truncate, skip"),
    ],
    ids=["malformed", "utf16", "overlong", "empty", "ranking", "hh-prefix", "bad-choice"],
)
def test_command_reports_bad_data_in_one_line(tmp_path, capsys, stage, overrides, expected):
    out = tmp_path / "out"
    overrides = [o.replace("BAD", str(BAD)) for o in overrides]
    code = cli(["run", stage, "model=tiny-random", "data.limit=8", f"hydra.run.dir={out}", *overrides])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if "lightalign: error:" in line]
    assert len(errors) == 1 and expected in errors[0], err[-1000:]
    assert "Traceback" not in err
    assert not (out / "manifest.json").exists() and not (out / "adapter").exists()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["lora.rnak=8"], "Key 'rnak' not in 'LoraSettings'"),  # unknown key
        (["trainer.max_step=2"], "Key 'max_step' not in 'TrainerSettings'); did you mean trainer.max_steps?"),
        (["trainer.max_steps=ten"], "Value 'ten' of type 'str' could not be converted to Integer"),  # wrong type
        (["lora.r=abc"], "Error merging override lora.r=abc"),
        (["quant=nf5"], "Could not find 'quant/nf5'; valid: nf4, none"),  # unknown option
        ([f"data.train={Path('missing.jsonl').resolve()}"], "missing.jsonl: file not found"),
    ],
)
def test_command_reports_bad_config_before_anything_runs(tmp_path, capsys, overrides, expected):
    out = tmp_path / "out"
    code = cli(["run", "sft", "model=tiny-random", f"hydra.run.dir={out}", *overrides])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("lightalign: error: ")  # one line, before any model loads
    assert not out.exists()  # refused before the run directory was made
