"""GRPO's reward: a weighted sum of parts, each a ``(prompts, answers) -> scores`` callable, each part kept.

A part is any scorer: the demo's gold judge (``lightalign.demo.GoldJudge``), its correctness alone
(``GoldJudge(part="correct")``, a verifiable reward), a unit-test checker, or a reward stage's model run on the
shared base. Keeping every part's scores (logged as ``reward/<name>``) is what makes reward hacking visible:
a learned reward model that misreads a feature gets optimised straight into it while the correctness part
stays flat.

Each part gets each prompt as its last user turn (the :data:`~lightalign.eval.hooks.ScoreFn` contract, what
a judge reads); a part that sets ``accepts_messages = True`` (a reward model) gets the whole message list.
A part that raises, returns the wrong number of scores or a non-finite one is a one-line
:class:`~lightalign.errors.RewardError` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from lightalign.data.formats import prompt_text
from lightalign.data.types import Message
from lightalign.errors import ConfigError, RewardError
from lightalign.eval.hooks import ScoreFn, judge_scores


@dataclass(frozen=True)
class RewardPart:
    """``weight`` × ``fn``; ``name`` is how it is logged (``reward/<name>``) and named in errors."""

    name: str
    fn: ScoreFn
    weight: float = 1.0


@dataclass
class RewardScores:
    """The reward of each answer (``total``, the weighted sum) and each part's own, unweighted, scores."""

    total: list[float]
    parts: dict[str, list[float]]

    def means(self) -> dict[str, float]:
        """``{"reward": mean total, "reward/<name>": mean of each part}``, for the training log."""
        means = {"reward": sum(self.total) / max(len(self.total), 1)}
        for name, scores in self.parts.items():
            means[f"reward/{name}"] = sum(scores) / max(len(scores), 1)
        return means


class WeightedReward:
    """``Σ_k weight_k · part_k(prompts, answers)``; also a plain ``ScoreFn`` (its call returns the total), so
    the eval hooks can score held-out answers with exactly the reward that was trained on.

    Example:
        >>> reward = WeightedReward([RewardPart("long", lambda p, a: [len(x) for x in a], 0.5),
        ...                          RewardPart("yes", lambda p, a: [float(x == "yes") for x in a])])
        >>> reward(["Q?", "Q?"], ["yes", "no"])
        [2.5, 1.0]
        >>> reward.score(["Q?"], ["no"]).parts
        {'long': [2.0], 'yes': [0.0]}

    Raises:
        ConfigError: no parts, two parts with one name, or a weight that is not a finite number.
    """

    accepts_messages = True  # each part gets what it accepts (see score)

    def __init__(self, parts: Sequence[RewardPart]) -> None:
        if not parts:
            raise ConfigError("the reward has no parts: give at least one reward callable or a reward model")
        names = [part.name for part in parts]
        if len(set(names)) != len(names):
            raise ConfigError(f"reward parts must have distinct names, got {names}")
        for part in parts:
            if not math.isfinite(part.weight):
                raise ConfigError(f"reward part {part.name!r}: weight {part.weight} is not a finite number")
        self.parts = list(parts)

    def score(self, prompts: Sequence[str | list[Message]], answers: Sequence[str]) -> RewardScores:
        """Every part's scores and their weighted sum, for ``prompts`` (texts or message lists) and ``answers``.

        Raises:
            RewardError: a part raised, or returned the wrong number of scores or a non-finite one.
        """
        texts = [p if isinstance(p, str) else prompt_text(p) for p in prompts]
        parts: dict[str, list[float]] = {}
        for part in self.parts:
            inputs = list(prompts) if getattr(part.fn, "accepts_messages", False) else texts
            parts[part.name] = judge_scores(part.fn, inputs, list(answers), name=f"reward part {part.name!r}",
                                            error=RewardError)
        total = [sum(part.weight * parts[part.name][i] for part in self.parts) for i in range(len(answers))]
        return RewardScores(total, parts)

    def __call__(self, prompts: Sequence[str | list[Message]], answers: Sequence[str]) -> list[float]:
        return self.score(prompts, answers).total
