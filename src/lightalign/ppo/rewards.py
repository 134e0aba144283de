"""PPO's reward, a component: the reward stage's model on the shared base, or any ``(prompts, answers)`` callable.

- ``ppo.reward_model=DIR`` (a reward stage's run directory): its adapter and ``score`` head run as the
  ``reward`` role of the one shared base (:class:`lightalign.reward_model.SharedBaseRewardModel`), no second
  copy of the base.
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

from lightalign.data.formats import prompt_text
from lightalign.data.types import PromptOnly
from lightalign.errors import ConfigError, NonFiniteLossError

RewardFn = Callable[[list[Any], list[str]], list[float]]


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
