"""Preference tokenisation and collation: reward groups (InstructGPT batches) and DPO rows."""

import math

import pytest
import torch

from lightalign.data.collators import pad_ranked_groups, pad_sequences
from lightalign.data.preference import to_preference_pairs
from lightalign.data.tokenize import (
    encode_exchange,
    encode_prompt,
    group_reward_pairs,
    tokenize_preference_pairs,
    tokenize_reward_groups,
    trained_reward_pairs,
)
from lightalign.data.types import PreferencePair
from lightalign.errors import DataError

PROMPT = [{"role": "user", "content": "Q?"}]


def _ranking(group, k=3, prompt="Q?"):
    row = {"prompt": prompt, "responses": [f"answer {i}" for i in range(k)], "ranking": list(range(k))}
    return to_preference_pairs(row, f"r:{group}", group=group)[0]


def test_encode_exchange_is_the_chat_rendering_of_prompt_and_answer(tiny_tokenizer):
    ids = encode_exchange(tiny_tokenizer, PROMPT, "Yes.")
    assert tiny_tokenizer.decode(ids) == "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\nYes.<|im_end|>\n"
    assert ids[: len(encode_prompt(tiny_tokenizer, PROMPT))] == encode_prompt(tiny_tokenizer, PROMPT)


def test_reward_groups_tokenise_each_answer_once(tiny_tokenizer):
    pairs = _ranking(0, k=4) + [PreferencePair(PROMPT, "yes", "no", "p:1")] + _ranking(1, k=3)
    rows, report = tokenize_reward_groups(tiny_tokenizer, pairs, max_length=256)
    assert report.kept == 3 and [len(r["input_ids"]) for r in rows] == [4, 2, 3]
    first = rows[0]
    assert len(first["chosen_index"]) == math.comb(4, 2) and sum(first["pair_weight"]) == pytest.approx(1.0)
    assert tiny_tokenizer.decode(first["input_ids"][0]).endswith("answer 0<|im_end|>\n")
    assert all(c < r for c, r in zip(first["chosen_index"], first["rejected_index"], strict=True))  # best first
    assert rows[1]["pair_weight"] == [1.0]


def test_reward_groups_overlong_policies(tiny_tokenizer):
    pairs = _ranking(0, prompt="long " * 40)
    with pytest.raises(DataError, match="r:0: .* > data.max_length=64"):
        tokenize_reward_groups(tiny_tokenizer, pairs, max_length=64)
    rows, report = tokenize_reward_groups(tiny_tokenizer, pairs, max_length=64, overlong="skip")
    assert rows == [] and report.skipped == 1 and report.skipped_origins == ["r:0"]
    rows, report = tokenize_reward_groups(tiny_tokenizer, pairs, max_length=64, overlong="truncate")
    assert report.truncated == 1 and all(len(ids) == 64 for ids in rows[0]["input_ids"])
    assert tiny_tokenizer.decode(rows[0]["input_ids"][0]).endswith("answer 0<|im_end|>\n")  # the end is kept


def test_trained_reward_pairs_leave_out_the_groups_that_were_skipped(tiny_tokenizer):
    short, long = _ranking(0, k=3), _ranking(1, k=3, prompt="long " * 40)
    lone = [PreferencePair(PROMPT, "yes", "no", "p:1")]
    pairs = short + long + lone
    assert group_reward_pairs(pairs) == [short, long, lone]
    _, report = tokenize_reward_groups(tiny_tokenizer, pairs, max_length=64, overlong="skip")
    assert report.skipped == 1 and trained_reward_pairs(pairs, report) == short + lone
    _, report = tokenize_reward_groups(tiny_tokenizer, pairs, max_length=64, overlong="truncate")
    assert trained_reward_pairs(pairs, report) == pairs


def test_pad_ranked_groups_indexes_the_flat_batch_and_weighs_groups_equally():
    rows = [
        {"input_ids": [[5, 6], [5], [5, 7, 8]], "chosen_index": [0, 0, 1], "rejected_index": [1, 2, 2],
         "pair_weight": [1 / 3, 1 / 3, 1 / 3]},
        {"input_ids": [[9], [9, 9]], "chosen_index": [0], "rejected_index": [1], "pair_weight": [1.0]},
    ]
    batch = pad_ranked_groups(rows, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 0], [5, 0, 0], [5, 7, 8], [9, 0, 0], [9, 9, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert batch["chosen_index"].tolist() == [0, 0, 1, 3] and batch["rejected_index"].tolist() == [1, 2, 2, 4]
    assert torch.allclose(batch["pair_weight"], torch.tensor([1 / 6, 1 / 6, 1 / 6, 1 / 2]))
    assert pad_sequences([[5, 6], [7]], 0)["input_ids"].tolist() == [[5, 6], [7, 0]]


def test_dpo_rows_split_prompt_and_answers(tiny_tokenizer):
    pair = PreferencePair(PROMPT, "Yes.", "No way.", "p:1")
    (row,), report = tokenize_preference_pairs(tiny_tokenizer, [pair], max_length=256)
    assert row["prompt_ids"] == encode_prompt(tiny_tokenizer, PROMPT)
    assert tiny_tokenizer.decode(row["chosen_ids"]) == "Yes.<|im_end|>\n"  # the answer's end-of-turn is learned
    assert row["prompt_ids"] + row["rejected_ids"] == encode_exchange(tiny_tokenizer, PROMPT, "No way.")
    assert report.kept == 1


def test_dpo_rows_overlong_policies(tiny_tokenizer):
    pair = PreferencePair(PROMPT, "Yes " * 30, "No.", "p:1")
    prompt_len = len(encode_prompt(tiny_tokenizer, PROMPT))
    with pytest.raises(DataError, match="p:1"):
        tokenize_preference_pairs(tiny_tokenizer, [pair], max_length=prompt_len + 10)
    (row,), report = tokenize_preference_pairs(tiny_tokenizer, [pair], max_length=prompt_len + 10,
                                               overlong="truncate")
    assert len(row["chosen_ids"]) == 10 and report.truncated == 1
    rows, report = tokenize_preference_pairs(tiny_tokenizer, [pair], max_length=prompt_len, overlong="truncate")
    assert rows == [] and report.skipped == 1  # no room left for any answer token
