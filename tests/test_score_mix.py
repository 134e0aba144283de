"""The score mix: fitting its two weights, combining, saving, and measuring it on pairs (no model needed)."""

from __future__ import annotations

import random

import pytest
import torch

from lightalign.data.types import PreferencePair
from lightalign.score_mix import (
    SCORE_MIX_FILE,
    ScoreMix,
    fit_mix_on_pairs,
    fit_score_mix,
    load_score_mix,
    save_score_mix,
)


def preferences(read: str, n: int = 400, seed: int = 0) -> tuple[list[float], list[float]]:
    """Margins of ``n`` pairs (chosen minus rejected) whose order only the ``read`` margin ("head" or
    "likelihood") decides; the other margin is noise of either sign."""
    rng = random.Random(seed)
    head, likelihood = [], []
    for _ in range(n):
        signal, noise = abs(rng.gauss(0, 1)) + 0.05, rng.gauss(0, 1)
        head.append(signal if read == "head" else noise)
        likelihood.append(signal if read == "likelihood" else noise)
    return head, likelihood


@pytest.mark.parametrize("read", ["head", "likelihood"])
def test_the_fit_weighs_the_reading_that_orders_the_pairs(read):
    mix = fit_score_mix(*preferences(read))
    informative, other = ((mix.head_weight, mix.likelihood_weight) if read == "head"
                          else (mix.likelihood_weight, mix.head_weight))
    assert informative > 2.0 and abs(other) < 0.3 * informative


def test_pair_weights_count_in_the_fit():
    head, likelihood = preferences("head", n=200)
    noise_head, noise_likelihood = preferences("likelihood", n=200, seed=1)
    # the same pairs twice: once ordered by the head, once by the likelihood; the weights say which counts
    mixed_head, mixed_likelihood = head + noise_head, likelihood + noise_likelihood
    by_head = fit_score_mix(mixed_head, mixed_likelihood, [1.0] * 200 + [0.01] * 200)
    by_likelihood = fit_score_mix(mixed_head, mixed_likelihood, [0.01] * 200 + [1.0] * 200)
    assert by_head.head_weight > by_head.likelihood_weight
    assert by_likelihood.likelihood_weight > by_likelihood.head_weight


def test_fit_refuses_no_pairs_or_uneven_margins():
    with pytest.raises(ValueError, match="margins"):
        fit_score_mix([], [])
    with pytest.raises(ValueError, match="margins"):
        fit_score_mix([1.0], [1.0, 2.0])


def test_combine_reads_the_likelihood_only_when_weighted():
    head, likelihood = torch.tensor([1.0, -2.0]), torch.tensor([-0.5, -3.0])
    assert torch.equal(ScoreMix().combine(head, None), head)
    assert torch.allclose(ScoreMix(2.0, 0.5).combine(head, likelihood), torch.tensor([1.75, -5.5]))
    with pytest.raises(ValueError, match="where each answer starts"):
        ScoreMix(1.0, 0.5).combine(head, None)
    with pytest.raises(ValueError, match="finite"):
        ScoreMix(float("nan"), 0.0)


def test_save_and_load_round_trip_and_default(tmp_path):
    assert load_score_mix(tmp_path) == ScoreMix()  # an adapter without the file: the head alone
    save_score_mix(ScoreMix(1.25, 0.5), tmp_path)
    assert load_score_mix(tmp_path) == ScoreMix(1.25, 0.5)
    (tmp_path / SCORE_MIX_FILE).write_text('{"head": 1}')
    with pytest.raises(ValueError, match="not a score mix"):
        load_score_mix(tmp_path)


class PartsByText:
    """A stand-in reward model: the head reads the answer's length, the likelihood whether it says 'yes'."""

    def __init__(self) -> None:
        self.scored: list[str] = []

    def score_parts(self, prompts, responses):
        self.scored += responses
        return [float(len(r)) for r in responses], [1.0 if "yes" in r else 0.0 for r in responses]


def test_fit_on_pairs_scores_each_answer_once_and_measures_each_reading():
    prompt = [{"role": "user", "content": "Q?"}]
    ranking = [PreferencePair(prompt, "yes", "no, long answer", group=0),  # only the likelihood orders these
               PreferencePair(prompt, "yes", "nope", group=0),
               PreferencePair(prompt, "nope", "no, long answer", group=0)]
    held_out = [PreferencePair([{"role": "user", "content": "R?"}], "yes", "no no no")]
    scorer = PartsByText()
    mix, metrics = fit_mix_on_pairs(scorer, ranking, held_out)
    assert sorted(scorer.scored) == sorted(["yes", "no, long answer", "nope", "yes", "no no no"])
    assert mix.likelihood_weight > 0 and metrics["pairwise_accuracy"] == 1.0
    assert metrics["head_pairwise_accuracy"] == 0.0 and metrics["likelihood_pairwise_accuracy"] == 1.0
    assert metrics["train_head_pairwise_accuracy"] == pytest.approx(0.0)
    assert metrics["score_likelihood_weight"] == mix.likelihood_weight
    # the held-out answers "yes" (head 3, likelihood 1) and "no no no" (head 8, likelihood 0), mixed
    expected = (mix.head_weight * 3 + mix.likelihood_weight + mix.head_weight * 8) / 2
    assert metrics["mean_score"] == pytest.approx(expected)
