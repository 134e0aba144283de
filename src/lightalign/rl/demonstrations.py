"""Demonstrations mixed into an RL update: the SFT loss on the SFT data, so RL does not unlearn what SFT taught.

InstructGPT's PPO-ptx (Ouyang et al. 2022, eq. 2) adds ``γ · log π(x)`` on pretraining data to the RL objective
to undo the "alignment tax": skills that the RL updates knock over because no sampled reward defends them. Here
the same term uses the demonstration dialogues the SFT stage learned from: each optimiser step adds
``weight × (the mean next-token loss over the answer tokens of a batch of demonstrations)``. A prompt whose
sampled answers all score the same gives RL no gradient at all, so its skill is only defended by this term
(and by the KL penalty, which acts only on the answers sampled).

Used by GRPO (``grpo.sft_weight``) and PPO (``ppo.sft_weight``): :func:`load_demonstrations` reads them,
``state_dict`` goes into the loop checkpoint under :data:`CHECKPOINT_KEY` and :func:`restore_demonstrations`
puts it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from lightalign.data import load_lm_examples
from lightalign.data.collators import pad_lm
from lightalign.data.tokenize import IGNORE_INDEX, TokenizeReport, tokenize_lm_examples
from lightalign.errors import ConfigError, DataError
from lightalign.models.logprobs import causal_lm_label_logprobs
from lightalign.rl.prompts import PromptSampler

CHECKPOINT_KEY = "demonstrations"  # their order's state in a loop checkpoint's JSON state


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


def load_demonstrations(
    path: str,
    *,
    fmt: str,
    split: str,
    limit: int | None,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    overlong: str,
    batch_size: int,
    seed: int,
    option: str,
) -> tuple[DemonstrationBatches, TokenizeReport]:
    """The dialogues of ``path`` (an RL stage's ``data.train``), tokenised for the SFT loss, in batches.

    Args:
        path, fmt, split, limit: where the dialogues are (:func:`lightalign.data.load_lm_examples`).
        tokenizer, max_length, overlong: how they are tokenised (:func:`lightalign.data.tokenize.
            tokenize_lm_examples`, the SFT stage's way: the loss is on the assistant turns).
        batch_size: demonstrations per optimiser step.
        seed: their order's (keep it apart from the prompts' order).
        option: the option that asked for them, named in the error when ``path`` holds no dialogues
            (e.g. ``"grpo.sft_weight"``).

    Returns:
        The batches and what tokenising did (:func:`describe_demonstrations` says both in one line).

    Raises:
        DataError: ``path`` holds no dialogues (e.g. prompts alone), or none with an assistant answer.
    """
    try:
        examples = load_lm_examples(path, fmt=fmt, split=split, limit=limit)
    except DataError as err:
        raise DataError(err.origin, f"{err.message} ({option} > 0 learns from data.train's answers: "
                                    "give dialogues, or set it to 0)", field=err.field) from err
    rows, report = tokenize_lm_examples(tokenizer, examples, max_length=max_length, overlong=overlong)
    return DemonstrationBatches(rows, batch_size, tokenizer.pad_token_id, seed=seed, source=path), report


def describe_demonstrations(demonstrations: DemonstrationBatches, report: TokenizeReport, weight: float) -> str:
    """One line for the recipe to print: the SFT loss's weight and what became of the demonstrations."""
    return (f"demonstrations for the SFT loss (weight {weight:g}): {len(demonstrations.rows)} kept, "
            f"{report.truncated} truncated, {report.skipped} skipped (too long), "
            f"{demonstrations.left_out} without an answer")


def restore_demonstrations(demonstrations: DemonstrationBatches, state: dict[str, Any], *, checkpoint: str,
                           option: str) -> None:
    """Put the demonstrations' order back from a loop checkpoint's JSON ``state``.

    Raises:
        ConfigError: the checkpoint was saved without them (a run without ``option``): resuming it with the SFT
            loss would not continue the run that was saved.
    """
    if CHECKPOINT_KEY not in state:
        raise ConfigError(f"cannot resume {checkpoint} with {option} > 0: it was saved without the SFT loss; "
                          "resume with the same settings or use a new hydra.run.dir")
    demonstrations.load_state_dict(state[CHECKPOINT_KEY])
