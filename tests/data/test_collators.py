"""Collators against hand-written tensors."""

import torch

from lightalign.data.collators import LMCollator, pack_lm, pad_lm, pad_preference, pad_prompts


def test_pad_lm_keeps_eos_label_when_pad_equals_eos():
    eos = pad = 0
    batch = pad_lm(
        [{"input_ids": [5, 6, eos], "labels": [-100, 6, eos]}, {"input_ids": [7], "labels": [7]}], pad_token_id=pad
    )
    assert batch["input_ids"].tolist() == [[5, 6, 0], [7, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    # the first row's EOS (== pad) keeps its label; padding positions are -100
    assert batch["labels"].tolist() == [[-100, 6, 0], [7, -100, -100]]


def test_pad_lm_to_multiple():
    batch = pad_lm([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}], pad_token_id=9, pad_to_multiple_of=4)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 9]]
    assert batch["labels"].tolist() == [[1, 2, 3, -100]]


def test_pack_lm_restarts_positions_and_masks_row_starts():
    batch = pack_lm([{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [7, 8], "labels": [-100, 8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 6, -100, 8]]
    assert batch["use_cache"] is False


def test_pad_prompts_left_pads():
    batch = pad_prompts([[5, 6], [7]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6], [0, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1], [0, 1]]


def test_pad_preference_stacks_chosen_then_rejected():
    batch = pad_preference(
        [
            {"chosen_input_ids": [5, 6], "rejected_input_ids": [5], "weight": 0.5},
            {"chosen_input_ids": [8], "rejected_input_ids": [8, 9, 9], "weight": 1.0},
        ],
        pad_token_id=0,
    )
    assert batch["input_ids"].tolist() == [[5, 6, 0], [8, 0, 0], [5, 0, 0], [8, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 1, 1]]
    assert torch.equal(batch["weight"], torch.tensor([0.5, 1.0]))


def test_lm_collator_switches_to_packing():
    rows = [{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [3], "labels": [3]}]
    assert LMCollator(0)(rows)["input_ids"].shape == (2, 2)
    assert LMCollator(0, padding_free=True)(rows)["input_ids"].shape == (1, 3)
