"""Group advantages of each option against numbers worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from lightalign.grpo.advantages import group_advantages, zero_spread_fraction

# Two groups of G = 4: one with a spread, one where every answer scored the same.
SCORES = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])


def close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_grpo_divides_by_the_group_std():
    # group 1: mean 0.5, Bessel std sqrt(4 · 0.25 / 3) = 1/sqrt(3) -> ±0.5 · sqrt(3) (eps 1e-4 aside)
    a = 0.5 / (1 / math.sqrt(3) + 1e-4)
    close(group_advantages(SCORES, 4, "grpo"), [a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])


def test_rloo_subtracts_the_mean_of_the_others():
    # answer 1 of group 1: 1 - mean(0, 0, 1) = 2/3; answer 2: 0 - mean(1, 0, 1) = -2/3
    close(group_advantages(SCORES, 4, "rloo"), [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0, 0.0, 0.0, 0.0])
    # G = 2: each answer against the other one
    close(group_advantages(torch.tensor([3.0, 1.0]), 2, "rloo"), [2.0, -2.0])


def test_dr_grpo_only_centres():
    close(group_advantages(SCORES, 4, "dr_grpo"), [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    # unlike grpo the scale of the scores is kept: ten times the spread, ten times the advantage
    close(group_advantages(10 * SCORES[:4], 4, "dr_grpo"), [5.0, -5.0, -5.0, 5.0])


@pytest.mark.parametrize("method", ["grpo", "rloo", "dr_grpo"])
def test_a_group_of_equal_scores_has_zero_advantage_and_no_nan(method):
    advantages = group_advantages(torch.full((4,), 0.7), 4, method)
    assert torch.equal(advantages, torch.zeros(4))


@pytest.mark.parametrize("method", ["grpo", "rloo", "dr_grpo"])
def test_groups_do_not_mix(method):
    # the second group's scores do not change the first group's advantages
    alone = group_advantages(SCORES[:4], 4, method)
    together = group_advantages(torch.cat([SCORES[:4], torch.tensor([9.0, -3.0, 0.0, 100.0])]), 4, method)
    torch.testing.assert_close(together[:4], alone)


def test_bad_groups_are_refused():
    with pytest.raises(ValueError, match="at least 2 answers"):
        group_advantages(torch.zeros(3), 1)
    with pytest.raises(ValueError, match="do not split into groups of 4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="'grpo', 'rloo' or 'dr_grpo'"):
        group_advantages(torch.zeros(4), 4, "ppo")  # type: ignore[arg-type]


def test_zero_spread_fraction_counts_groups_that_teach_nothing():
    assert zero_spread_fraction(SCORES, 4) == 0.5
    # in pairs: [1, 0] [0, 1] [0.5, 0.5] [0.5, 0.5] -> two of four
    assert zero_spread_fraction(SCORES, 2) == 0.5
    assert zero_spread_fraction(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), 3) == 1.0
