"""Demonstrations for the SFT loss mixed into RL: loading them, their order resumes exactly, the answer tokens' loss."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from lightalign.data.tokenize import IGNORE_INDEX
from lightalign.errors import ConfigError, DataError
from lightalign.rl.demonstrations import (
    CHECKPOINT_KEY,
    DemonstrationBatches,
    demonstration_loss,
    describe_demonstrations,
    load_demonstrations,
    restore_demonstrations,
)

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


def test_loading_prompts_only_is_a_data_error_naming_the_option(tiny_tokenizer):
    settings = {"fmt": "auto", "split": "train", "limit": 4, "tokenizer": tiny_tokenizer, "max_length": 200,
                "overlong": "error", "batch_size": 2, "seed": 0}
    batches, report = load_demonstrations("demo:sft", **settings, option="ppo.sft_weight")
    assert len(batches.rows) == report.kept == 4 and batches.left_out == 0
    assert describe_demonstrations(batches, report, 0.5) == ("demonstrations for the SFT loss (weight 0.5): 4 kept, "
                                                             "0 truncated, 0 skipped (too long), 0 without an answer")
    with pytest.raises(DataError, match=r"prompts.jsonl:1: unrecognised row .*\(ppo.sft_weight > 0 learns from "
                                        r"data.train's answers: give dialogues, or set it to 0\)"):
        load_demonstrations("demo:prompts", **settings, option="ppo.sft_weight")


def test_resuming_from_a_checkpoint_without_them_is_a_config_error():
    batches = DemonstrationBatches(ROWS, batch_size=2, pad_token_id=0, seed=3)
    saved = DemonstrationBatches(ROWS, batch_size=2, pad_token_id=0, seed=3)
    saved.next_batch()
    restore_demonstrations(batches, {"step": 4, CHECKPOINT_KEY: saved.state_dict()}, checkpoint="ckpt",
                           option="ppo.sft_weight")
    assert batches.state_dict() == saved.state_dict()
    with pytest.raises(ConfigError, match="cannot resume ckpt with ppo.sft_weight > 0: it was saved without the SFT"):
        restore_demonstrations(batches, {"step": 4}, checkpoint="ckpt", option="ppo.sft_weight")
