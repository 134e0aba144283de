"""Use a trained reward model: ``RewardModel.load(DIR).score(prompts, responses) -> list[float]``.

A reward stage's run directory holds the LoRA adapter *and* the trained ``score`` head (``DIR/adapter/``,
saved through ``modules_to_save``) and the config it was trained with (``DIR/config.yaml``): loading puts the
same base model, quantisation and chat template back together. PPO and the eval hooks score answers with it::

    reward = RewardModel.load("outputs/reward/run")
    reward.score(["What is 7 + 5?"], ["12."])                       # prompts: strings or message lists
    reward(["What is 7 + 5?"], ["12."])                             # the same: a ScoreFn for SampleAnswers
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightalign.data.collators import pad_sequences
from lightalign.data.tokenize import encode_exchange, keep_last
from lightalign.data.types import Message
from lightalign.models.modes import eval_mode
from lightalign.models.score_position import score_pad_token_id
from lightalign.models.trained import ModelSource, load_model_source
from lightalign.rundir import StageRun

Prompt = str | list[Message]


@torch.no_grad()
def score_sequences(model: PreTrainedModel, sequences: Sequence[Sequence[int]], *, batch_size: int = 8) -> list[float]:
    """The scalar score of each token sequence, in batches (the model is left in the mode it was in).

    Padded with the id the score head pools with, so each score is read where training read it
    (:mod:`lightalign.models.score_position`), whatever the tokenizer's pad token.
    """
    device = next(model.parameters()).device
    pad_token_id = score_pad_token_id(model.config)
    scores: list[float] = []
    with eval_mode(model):
        for start in range(0, len(sequences), batch_size):
            batch = {k: v.to(device) for k, v in pad_sequences(sequences[start : start + batch_size],
                                                               pad_token_id).items()}
            scores += model(**batch, use_cache=False).logits[:, 0].float().tolist()
    return scores


def as_messages(prompt: Prompt) -> list[Message]:
    """A prompt as messages: a string is one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


class RewardModel:
    """A reward model (base + LoRA adapter + score head) that scores answers to prompts.

    Sequences longer than ``max_length`` keep their last ``max_length`` tokens, as in training; how many were
    cut is counted in ``truncated``. A scorer that reads whole message lists (``accepts_messages``): a reward
    callable's users (PPO, GRPO) pass each prompt's dialogue, not only its last user turn.
    """

    accepts_messages = True

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, max_length: int = 512,
                 batch_size: int = 8) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.truncated = 0

    @classmethod
    def load(cls, path: str | Path, *, batch_size: int = 8) -> RewardModel:
        """Load a reward stage's output: its run directory, or the ``adapter/`` folder inside one.

        Raises:
            ConfigError: ``path`` is not a reward stage's output (:meth:`~lightalign.rundir.StageRun.open`).
        """
        run = StageRun.open(path, stage="reward")
        model, tokenizer = load_model_source(ModelSource.of_run(run))
        return cls(model, tokenizer, max_length=run.setting("data.max_length"), batch_size=batch_size)

    def encode(self, prompt: Prompt, response: str) -> list[int]:
        """Token ids of one scored exchange, exactly as in training (chat template, last tokens kept)."""
        ids = encode_exchange(self.tokenizer, as_messages(prompt), response)
        self.truncated += len(ids) > self.max_length
        return keep_last(ids, self.max_length)

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """One score per (prompt, response): higher is better."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        sequences = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        return score_sequences(self.model, sequences, batch_size=self.batch_size)

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        return self.score(prompts, responses)
