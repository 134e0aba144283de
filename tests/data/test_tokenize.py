"""Tokenisation: completion-only labels, EOS kept when pad == EOS, no double BOS, over-long policies."""

import pytest
import torch

from lightalign.data.collators import pack_lm, pad_lm
from lightalign.data.tokenize import (
    IGNORE_INDEX,
    TokenizeReport,
    fit_to_max_length,
    tokenize_conversation,
    tokenize_lm_examples,
    tokenize_text,
)
from lightalign.data.types import Conversation, PlainText
from lightalign.errors import DataError

CONV = Conversation(
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], origin="t.jsonl:1"
)


def _labelled_text(tok, row):
    return tok.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE_INDEX])


def test_only_the_answer_and_its_eos_are_labelled(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.pad_token_id == tok.eos_token_id  # the dangerous case, as in SmolLM2
    row = tokenize_conversation(tok, CONV)
    assert _labelled_text(tok, row) == "Hello.<|im_end|>\n"
    eos_positions = [i for i, t in enumerate(row["input_ids"]) if t == tok.eos_token_id]
    # the user turn's <|im_end|> is not learned, the answer's is
    assert row["labels"][eos_positions[0]] == IGNORE_INDEX
    assert row["labels"][eos_positions[-1]] == tok.eos_token_id
    # still there after padding, although pad == eos
    batch = pad_lm([row, {"input_ids": [5], "labels": [5]}], tok.pad_token_id)
    assert batch["labels"][0, eos_positions[-1]].item() == tok.eos_token_id


def test_every_assistant_turn_is_learned(tiny_tokenizer):
    conv = Conversation(
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "B"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "D"},
        ]
    )
    assert _labelled_text(tiny_tokenizer, tokenize_conversation(tiny_tokenizer, conv)) == "B<|im_end|>\nD<|im_end|>\n"


def test_no_double_bos(tiny_tokenizer):
    tok = tiny_tokenizer
    tok_with_bos_template = tok.__class__.from_pretrained(tok.name_or_path)
    tok_with_bos_template.chat_template = "{{ bos_token }}" + tok.chat_template
    ids = tokenize_conversation(tok_with_bos_template, CONV)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id


def test_plain_text_is_all_labelled_and_ends_with_eos(tiny_tokenizer):
    row = tokenize_text(tiny_tokenizer, PlainText("abc"))
    assert row["labels"] == row["input_ids"]
    assert row["input_ids"][-1] == tiny_tokenizer.eos_token_id


@pytest.mark.parametrize("policy", ["error", "truncate", "skip"])
def test_overlong_policies_count_what_they_do(tiny_tokenizer, policy):
    long = Conversation([{"role": "user", "content": "q"}, {"role": "assistant", "content": "x" * 200}], "f:2")
    examples = [CONV, long]
    if policy == "error":
        with pytest.raises(DataError, match=r"f:2: .*tokens > data.max_length=64"):
            tokenize_lm_examples(tiny_tokenizer, examples, max_length=64, overlong=policy)
        return
    rows, report = tokenize_lm_examples(tiny_tokenizer, examples, max_length=64, overlong=policy)
    assert all(len(r["input_ids"]) <= 64 for r in rows)
    if policy == "truncate":
        assert (report.kept, report.truncated, report.skipped) == (2, 1, 0)
    else:
        assert (report.kept, report.truncated, report.skipped) == (1, 0, 1)
        assert report.skipped_origins == ["f:2"]


def test_truncation_that_removes_the_whole_answer_is_a_counted_skip(tiny_tokenizer):
    long_prompt = Conversation([{"role": "user", "content": "q" * 200}, {"role": "assistant", "content": "A"}], "f:3")
    rows, report = tokenize_lm_examples(tiny_tokenizer, [long_prompt], max_length=32, overlong="truncate")
    assert rows == [] and report.skipped == 1


def test_packed_batch_gives_the_same_loss_as_padded(tiny_tokenizer, tiny_model_dir):
    """Padding-free packing must not let rows attend to each other."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    rows = [tokenize_conversation(tiny_tokenizer, CONV), tokenize_text(tiny_tokenizer, PlainText("hello world"))]
    for row in rows:  # as pack_lm does: the first token of a row is never a target
        row["labels"][0] = IGNORE_INDEX
    with torch.no_grad():
        padded = model(**pad_lm(rows, tiny_tokenizer.pad_token_id)).loss
        packed = model(**pack_lm(rows)).loss
    assert torch.allclose(padded, packed, atol=1e-5)


def test_one_helper_applies_each_overlong_policy_and_counts_it():
    report = TokenizeReport()

    def fit(row, overlong, truncate=lambda ids: ids[:2]):
        return fit_to_max_length(row, len(row), origin="f.jsonl:7", max_length=2, overlong=overlong,
                                 truncate=truncate, report=report)

    assert fit([1, 2], "error") == [1, 2]  # fits: kept as it is
    assert fit([1, 2, 3], "truncate") == [1, 2]
    assert fit([1, 2, 3], "skip") is None
    assert fit([1, 2, 3], "truncate", truncate=lambda ids: None) is None  # nothing useful left: skipped
    assert (report.kept, report.truncated, report.skipped) == (2, 1, 2)
    assert report.skipped_origins == ["f.jsonl:7", "f.jsonl:7"]
    with pytest.raises(DataError, match=r"^f.jsonl:7: 3 tokens > data.max_length=2; set data.overlong=truncate"):
        fit([1, 2, 3], "error")


def test_a_scored_exchange_knows_where_its_answer_starts(tiny_tokenizer):
    from lightalign.data.tokenize import encode_prompt, encode_scored_exchange

    prompt = [{"role": "user", "content": "Capital of Japan?"}]
    ids, start = encode_scored_exchange(tiny_tokenizer, prompt, "Tokyo.", max_length=512)
    assert ids[:start] == encode_prompt(tiny_tokenizer, prompt)
    assert tiny_tokenizer.decode(ids[start:]).startswith("Tokyo.")
    # the last tokens are kept (a reward model reads its score at the end): the start moves with the cut
    cut, cut_start = encode_scored_exchange(tiny_tokenizer, prompt, "Tokyo.", max_length=len(ids) - 3)
    assert cut == ids[3:] and cut_start == start - 3
    # a cut into the answer leaves all of what is kept to the answer
    assert encode_scored_exchange(tiny_tokenizer, prompt, "Tokyo.", max_length=2)[1] == 0
