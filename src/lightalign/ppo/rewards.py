"""PPO's reward, a component: the reward stage's model on the shared base, or any ``(prompts, answers)`` callable.

- ``ppo.reward_model=DIR`` (a reward stage's run directory): its adapter and ``score`` head run as the
  ``reward`` role of the one shared base (:class:`SharedBaseRewardModel`), no second copy of the base.
- ``reward._target_=pkg.fn`` (or ``reward=gold_judge``): any callable ``(prompts, answers) -> scores``,
  e.g. :class:`lightalign.demo.GoldJudge` or a unit-test checker, for RL with verifiable rewards.

Callables get each prompt as its last user turn (the :data:`~lightalign.eval.hooks.ScoreFn` contract,
what a judge reads); a scorer that sets ``accepts_messages = True`` gets the whole message list instead,
as a reward model must, to see exactly the text it was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from lightalign.data.collators import pad_sequences
from lightalign.data.formats import prompt_text
from lightalign.data.tokenize import encode_exchange, keep_last
from lightalign.data.types import Message, PromptOnly
from lightalign.errors import ConfigError, NonFiniteLossError
from lightalign.ppo.roles import SharedBaseRoles
from lightalign.reward_model import as_messages

RewardFn = Callable[[list[Any], list[str]], list[float]]


class SharedBaseRewardModel:
    """The reward stage's model as a scorer, running as the ``reward`` role of :class:`SharedBaseRoles`.

    Answers are rendered exactly as in reward training (chat template, last ``max_length`` tokens kept),
    padded with the id the head pooled with and scored where it read them in training
    (:mod:`lightalign.models.score_position`), whatever the tokenizer's pad token. Usable as a ``ScoreFn``
    by eval hooks: scoring leaves the model's active adapter as it found it.

    Example::

        reward = SharedBaseRewardModel(roles, tokenizer)
        reward(["What is 7 + 5?"], ["12."])   # -> [1.83]
    """

    accepts_messages = True

    def __init__(
        self, roles: SharedBaseRoles, tokenizer: PreTrainedTokenizerBase, *, max_length: int = 512, batch_size: int = 8
    ) -> None:
        self.roles = roles
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size

    def __call__(self, prompts: Sequence[str | list[Message]], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        sequences = [
            keep_last(encode_exchange(self.tokenizer, as_messages(p), r), self.max_length)
            for p, r in zip(prompts, responses, strict=True)
        ]
        device = next(self.roles.model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(sequences), self.batch_size):
            batch = pad_sequences(sequences[start : start + self.batch_size], self.roles.pad_token_id)
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            scores += self.roles.reward_scores(ids, mask).tolist()
        return scores


def score_answers(reward_fn: RewardFn, prompts: Sequence[PromptOnly], answers: Sequence[str]) -> Tensor:
    """Score each answer with ``reward_fn`` -> ``[B]`` float32, checking what a user-supplied callable returned.

    Raises:
        ConfigError: the callable returned the wrong number of scores or something that is not a number.
        NonFiniteLossError: a score is NaN or infinite (it would poison every later update).
    """
    if getattr(reward_fn, "accepts_messages", False):
        inputs: list[Any] = [p.prompt for p in prompts]
    else:
        inputs = [prompt_text(p.prompt) for p in prompts]
    try:
        scores = [float(s) for s in reward_fn(inputs, list(answers))]
    except (TypeError, ValueError) as err:
        raise ConfigError(f"the reward callable must return one number per answer: {err}") from err
    if len(scores) != len(answers):
        raise ConfigError(f"the reward callable returned {len(scores)} scores for {len(answers)} answers")
    bad = [(i, s) for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        index, value = bad[0]
        raise NonFiniteLossError(f"the reward was {value} for the answer {answers[index]!r}")
    return torch.tensor(scores, dtype=torch.float32)
