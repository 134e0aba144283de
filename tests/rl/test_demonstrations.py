"""Demonstrations for the SFT loss mixed into RL: their order resumes exactly; the loss is the answer tokens' one."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from lightalign.data.tokenize import IGNORE_INDEX
from lightalign.errors import DataError
from lightalign.rl.demonstrations import DemonstrationBatches, demonstration_loss

ROWS = [{"input_ids": [5, 6, 7, 0], "labels": [IGNORE_INDEX, IGNORE_INDEX, 7, 0]},
        {"input_ids": [8, 9], "labels": [IGNORE_INDEX, 9]},
        {"input_ids": [3, 4, 2], "labels": [IGNORE_INDEX, 4, 2]}]


def test_batches_resume_where_the_state_left_off():
    batches = DemonstrationBatches(ROWS, batch_size=2, pad_token_id=0, seed=3)
    batches.next_batch()
    state = batches.state_dict()
    expected = [batches.next_batch()["input_ids"].tolist() for _ in range(3)]
    resumed = DemonstrationBatches(ROWS, batch_size=2, pad_token_id=0, seed=3)
    resumed.load_state_dict(state)
    assert [resumed.next_batch()["input_ids"].tolist() for _ in range(3)] == expected


def test_rows_without_an_answer_are_left_out_and_none_at_all_is_a_data_error():
    prompt_only = {"input_ids": [1, 2], "labels": [IGNORE_INDEX, IGNORE_INDEX]}
    batches = DemonstrationBatches([*ROWS, prompt_only], batch_size=1, pad_token_id=0, seed=0)
    assert len(batches.rows) == 3 and batches.left_out == 1  # counted: the recipe prints it
    with pytest.raises(DataError, match="prompts.jsonl: no row has an assistant answer"):
        DemonstrationBatches([prompt_only], batch_size=1, pad_token_id=0, seed=0, source="prompts.jsonl")


def test_the_loss_is_the_mean_over_answer_tokens_only(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    batch = DemonstrationBatches(ROWS, batch_size=3, pad_token_id=0, seed=0).next_batch()
    with torch.no_grad():
        loss = demonstration_loss(model, batch)
        log_probs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    # the answer tokens, each predicted from the position before it: 7, 0 | 9 | 4, 2 (padding and prompts: no loss)
    by_hand = []
    for row, rows_labels in enumerate(batch["labels"].tolist()):
        for t, label in enumerate(rows_labels):
            if label != IGNORE_INDEX:
                by_hand.append(-log_probs[row, t - 1, label])
    assert len(by_hand) == 5
    torch.testing.assert_close(loss, torch.stack(by_hand).mean())
