"""Demonstrations mixed into an RL update: the SFT loss on the SFT data, so RL does not unlearn what SFT taught.

InstructGPT's PPO-ptx (Ouyang et al. 2022, eq. 2) adds ``γ · log π(x)`` on pretraining data to the RL objective
to undo the "alignment tax": skills that the RL updates knock over because no sampled reward defends them. Here
the same term uses the demonstration dialogues the SFT stage learned from: each optimiser step adds
``weight × (the mean next-token loss over the answer tokens of a batch of demonstrations)``. A prompt whose
sampled answers all score the same gives RL no gradient at all, so its skill is only defended by this term
(and by the KL penalty, which acts only on the answers sampled).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightalign.data.collators import pad_lm
from lightalign.data.tokenize import IGNORE_INDEX
from lightalign.errors import DataError
from lightalign.models.logprobs import causal_lm_label_logprobs
from lightalign.rl.prompts import PromptSampler


class DemonstrationBatches:
    """Shuffled passes over tokenised demonstrations (``input_ids``/``labels`` rows), ``batch_size`` at a time.

    The order comes from a :class:`~lightalign.rl.prompts.PromptSampler` (seeded passes, no global RNG), so
    :meth:`state_dict` is all a checkpoint needs for an exact resume.
    """

    def __init__(self, rows: Sequence[dict[str, list[int]]], batch_size: int, pad_token_id: int, *, seed: int,
                 source: str = "the demonstrations") -> None:
        answered = [row for row in rows if any(label != IGNORE_INDEX for label in row["labels"])]
        self.left_out = len(rows) - len(answered)  # rows with no assistant answer: nothing to learn (reported)
        rows = answered
        if not rows:
            raise DataError(source, "no row has an assistant answer to learn from (the SFT loss in RL needs "
                                    "demonstrations: dialogues with assistant turns)")
        self.rows = rows
        self.pad_token_id = pad_token_id
        self.sampler = PromptSampler(len(rows), batch_size, seed=seed)

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next batch, right-padded: ``input_ids``, ``attention_mask``, ``labels``."""
        return pad_lm([self.rows[i] for i in self.sampler.next_batch()], self.pad_token_id)

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)


def demonstration_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mean next-token loss of ``model`` over the answer tokens of ``batch`` (the SFT loss; temperature 1).

    Through :func:`~lightalign.models.logprobs.causal_lm_label_logprobs`, as the SFT stage's loss: the output
    layer sees the labelled positions only, never the full ``[B, T, vocabulary]`` logits.
    """
    device = next(model.parameters()).device
    batch = {key: value.to(device) for key, value in batch.items()}
    logprobs = causal_lm_label_logprobs(model, batch["input_ids"], batch["labels"],
                                        attention_mask=batch["attention_mask"])
    return -logprobs.sum() / (batch["labels"][:, 1:] != IGNORE_INDEX).sum().clamp(min=1)
