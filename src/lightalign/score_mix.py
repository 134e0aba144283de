"""How a reward model's score is made from its two readings: the ``score`` head and the trunk's likelihood.

A reward model trained on a few hundred ranked pairs learns a head that reads form well and correctness badly,
while its trunk (the SFT model it started from) already ranks a correct answer above a wrong one of the same
form far more often, by likelihood (docs/reward.md, "The knowledge is in the trunk"). A reward stage with
``reward.likelihood=fit`` reads both::

    score = head_weight * head(last hidden state) + likelihood_weight * mean log p(answer token | before it)

the log-probabilities under the reward model's own trunk as a causal LM (its LoRA, the base's output layer),
averaged over the answer's tokens (end of turn included). The two weights are fitted after training, by
logistic regression of the ranking pairs' preferences on the two margins (:func:`fit_score_mix`), and saved
with the adapter (``adapter/score_mix.json``), so every consumer (:mod:`lightalign.reward_model`: PPO, GRPO,
the eval hooks, ``RewardModel.load``) scores the same way. An adapter without the file scores with its head
alone, as before.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch

from lightalign.data.preference import DistinctAnswers
from lightalign.data.types import Message, PreferencePair
from lightalign.rundir import write_json_atomic

SCORE_MIX_FILE = "score_mix.json"


@dataclass(frozen=True)
class ScoreMix:
    """``head_weight * head score + likelihood_weight * mean answer log-probability per token``."""

    head_weight: float = 1.0
    likelihood_weight: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.head_weight) and math.isfinite(self.likelihood_weight)):
            raise ValueError(f"score mix weights must be finite: {self}")

    @property
    def reads_likelihood(self) -> bool:
        return self.likelihood_weight != 0.0

    def combine(self, head: torch.Tensor, likelihood: torch.Tensor | None) -> torch.Tensor:
        """The mixed score from the head's scores and (when read) the answers' mean log-probabilities."""
        if not self.reads_likelihood:
            return self.head_weight * head
        if likelihood is None:
            raise ValueError("this reward model reads the answers' likelihood: pass where each answer starts")
        return self.head_weight * head + self.likelihood_weight * likelihood


def save_score_mix(mix: ScoreMix, adapter_dir: str | Path) -> Path:
    """Write ``adapter_dir/score_mix.json`` (atomically)."""
    path = Path(adapter_dir) / SCORE_MIX_FILE
    write_json_atomic(path, asdict(mix))
    return path


def load_score_mix(adapter_dir: str | Path) -> ScoreMix:
    """The mix saved with a reward adapter; the head alone (:class:`ScoreMix` defaults) where there is none."""
    path = Path(adapter_dir) / SCORE_MIX_FILE
    if not path.is_file():
        return ScoreMix()
    try:
        return ScoreMix(**json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: not a score mix ({error})") from error


def fit_score_mix(
    head_margins: Sequence[float],
    likelihood_margins: Sequence[float],
    weights: Sequence[float] | None = None,
    *,
    l2: float = 1e-3,
) -> ScoreMix:
    """The two weights that best predict the pairs' preferences: minimise the weighted mean of
    ``-log sigmoid(a * head margin + b * likelihood margin)`` (+ ``l2`` * (a² + b²), which keeps the weights
    finite when the pairs are separable), margins taken chosen minus rejected. No intercept: a pair's order is
    arbitrary, so a preference for "the first answer" has no meaning.

    Raises:
        ValueError: no pairs, or margins of different lengths.
    """
    if not head_margins or len(head_margins) != len(likelihood_margins):
        raise ValueError(f"need as many head as likelihood margins, and some: {len(head_margins)}, "
                         f"{len(likelihood_margins)}")
    x = torch.tensor([list(head_margins), list(likelihood_margins)], dtype=torch.float64).T
    w = torch.tensor(list(weights) if weights is not None else [1.0] * len(x), dtype=torch.float64)
    w = w / w.sum()
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)  # start: the head alone
    optimiser = torch.optim.LBFGS([params], max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = -(w * torch.nn.functional.logsigmoid(x @ params)).sum() + l2 * params.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    head_weight, likelihood_weight = params.detach().tolist()
    return ScoreMix(head_weight=head_weight, likelihood_weight=likelihood_weight)


class PartScorer(Protocol):
    """What :func:`fit_mix_on_pairs` reads: :class:`lightalign.reward_model.SharedBaseRewardModel`."""

    def score_parts(
        self, prompts: Sequence[list[Message]], responses: Sequence[str]
    ) -> tuple[list[float], list[float]]: ...


def _margins(
    scorer: PartScorer, pairs: Sequence[PreferencePair]
) -> tuple[list[float], list[float], list[tuple[float, float]]]:
    """Head and likelihood margins (chosen minus rejected) of each pair, each distinct answer scored once, and
    each distinct answer's (head, likelihood)."""
    distinct = DistinctAnswers.of(list(pairs))
    heads, likelihoods = scorer.score_parts(distinct.prompts, distinct.answers) if distinct.answers else ([], [])
    return (distinct.margins(list(pairs), heads), distinct.margins(list(pairs), likelihoods),
            list(zip(heads, likelihoods, strict=True)))


def fit_mix_on_pairs(
    scorer: PartScorer, train: Sequence[PreferencePair], held_out: Sequence[PreferencePair] = ()
) -> tuple[ScoreMix, dict[str, float]]:
    """Fit the mix on the training pairs (:func:`fit_score_mix`, each pair weighted as in training) and measure
    it: ``pairwise_accuracy`` and ``mean_margin`` of the mixed score on the held-out pairs, with
    ``head_pairwise_accuracy`` and ``likelihood_pairwise_accuracy`` (each reading alone) beside them and the
    ``train_*`` accuracies, ``mean_score`` (of the held-out answers, mixed); ``score_head_weight`` and
    ``score_likelihood_weight``. A tie is not a correct order.
    """
    head, likelihood, _ = _margins(scorer, train)
    mix = fit_score_mix(head, likelihood, [p.weight for p in train])

    def accuracy(margins: Sequence[float]) -> float:
        return sum(m > 0 for m in margins) / len(margins)

    def mixed(h: Sequence[float], ll: Sequence[float]) -> list[float]:
        return [mix.head_weight * a + mix.likelihood_weight * b for a, b in zip(h, ll, strict=True)]

    metrics = {"score_head_weight": mix.head_weight, "score_likelihood_weight": mix.likelihood_weight,
               "train_pairwise_accuracy": accuracy(mixed(head, likelihood)),
               "train_head_pairwise_accuracy": accuracy(head),
               "train_likelihood_pairwise_accuracy": accuracy(likelihood)}
    if held_out:
        head, likelihood, answers = _margins(scorer, held_out)
        margins = mixed(head, likelihood)
        scores = mixed([h for h, _ in answers], [ll for _, ll in answers])
        metrics.update(pairwise_accuracy=accuracy(margins), mean_margin=sum(margins) / len(margins),
                       mean_score=sum(scores) / len(scores),
                       head_pairwise_accuracy=accuracy(head), likelihood_pairwise_accuracy=accuracy(likelihood))
    return mix, metrics
