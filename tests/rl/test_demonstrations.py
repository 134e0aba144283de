"""Demonstrations for the SFT loss mixed into RL: their order resumes exactly; the loss is the answer tokens' one."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

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


class Bigram(torch.nn.Module):
    """A tiny causal LM with the transformers call signature: logits from the current token alone."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(10, 10)

    def forward(self, input_ids, attention_mask, labels):
        logits = self.table(input_ids)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, 10), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
        return type("Out", (), {"loss": loss, "logits": logits})


def test_the_loss_is_the_mean_over_answer_tokens_only():
    torch.manual_seed(0)
    model = Bigram()
    batch = DemonstrationBatches(ROWS, batch_size=3, pad_token_id=0, seed=0).next_batch()
    log_probs = model.table.weight.log_softmax(-1)
    # the answer tokens predicted from the token before each: 6->7, 7->0 | 8->9 | 3->4, 4->2
    by_hand = -torch.stack([log_probs[6, 7], log_probs[7, 0], log_probs[8, 9], log_probs[3, 4], log_probs[4, 2]])
    torch.testing.assert_close(demonstration_loss(model, batch), by_hand.mean())
