"""The shared eval-hook machinery: mid-training evaluations leave the training RNG alone."""

from __future__ import annotations

import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from lightalign.eval import EvalHookCallback


class _SamplingHook:
    name = "sampling"

    def __call__(self, ctx):
        return {"draw": torch.rand(()).item()}  # as ReferenceKL does when it samples answers


def test_a_mid_training_evaluation_does_not_shift_the_training_rng(tmp_path):
    callback = EvalHookCallback([_SamplingHook()], tokenizer=None, output_dir=tmp_path, every_n_steps=1)
    state = TrainerState(global_step=1)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    callback.on_step_end(TrainingArguments(output_dir=str(tmp_path)), state, TrainerControl(), model=object())
    assert "eval/draw" in state.log_history[-1]  # the hook ran
    assert torch.equal(torch.rand(3), expected)
