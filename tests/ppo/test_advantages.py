"""Advantages, rewards and whitening against numbers worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from lightalign.ppo.advantages import gae_advantages, paid_scores, per_token_rewards


def close(actual: torch.Tensor, expected: list | float) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-5, rtol=1e-5)


def test_gae_three_steps_by_hand():
    # gamma=1, lam=0.95, rewards [0, 0, 1], values [0.5, 0.6, 0.7]; the value after the last token is 0.
    # delta2 = 1 + 0 - 0.7 = 0.3                A2 = 0.3
    # delta1 = 0 + 0.7 - 0.6 = 0.1              A1 = 0.1 + 0.95 * 0.3   = 0.385
    # delta0 = 0 + 0.6 - 0.5 = 0.1              A0 = 0.1 + 0.95 * 0.385 = 0.46575
    # returns = A + V = [0.96575, 0.985, 1.0]
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    advantages, returns = gae_advantages(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.95)
    close(advantages, [[0.46575, 0.385, 0.3]])
    close(returns, [[0.96575, 0.985, 1.0]])


def test_gae_with_discount_by_hand():
    # gamma=0.9, lam=0.5, rewards [1, 2], values [0, 1]
    # delta1 = 2 + 0 - 1 = 1                    A1 = 1
    # delta0 = 1 + 0.9 * 1 - 0 = 1.9            A0 = 1.9 + 0.9 * 0.5 * 1 = 2.35
    advantages, returns = gae_advantages(
        torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 1.0]]), torch.ones(1, 2), gamma=0.9, lam=0.5
    )
    close(advantages, [[2.35, 1.0]])
    close(returns, [[2.35, 2.0]])


def test_gae_padding_does_not_change_results():
    # The same episode as the 3-step case, padded with junk rewards/values that must not be bootstrapped.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0, 5.0], [1.0, 2.0, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 9.0, 9.0], [0.0, 1.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.95)
    close(advantages[0], [0.46575, 0.385, 0.3, 0.0, 0.0])
    close(returns[0], [0.96575, 0.985, 1.0, 0.0, 0.0])
    # row 1 with gamma=1, lam=0.95: delta1 = 2 - 1 = 1, delta0 = 1 + 1 - 0 = 2, A0 = 2 + 0.95 = 2.95
    close(advantages[1], [2.95, 1.0, 0.0, 0.0, 0.0])


def test_gae_with_lambda_one_gives_reward_to_go():
    # gamma = lam = 1: returns are Monte-Carlo returns, whatever the values are.
    rewards = torch.tensor([[0.5, -1.0, 2.0, 0.25]])
    values = torch.tensor([[3.0, -2.0, 0.1, 7.0]])
    _, returns = gae_advantages(rewards, values, torch.ones(1, 4), gamma=1.0, lam=1.0)
    close(returns, [[1.75, 1.25, 2.25, 0.25]])


def test_per_token_rewards_k1_by_hand():
    # kl = logp - ref = [0.5, 0, -0.5]; non-score = -0.1 * kl = [-0.05, 0, 0.05]; score 2 at token 2.
    logprobs = torch.tensor([[-1.0, -2.0, -3.0, -7.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.5, -1.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    rewards, kl, non_score = per_token_rewards(torch.tensor([2.0]), logprobs, ref_logprobs, mask, kl_coef=0.1)
    close(kl, [[0.5, 0.0, -0.5, 0.0]])
    close(non_score, [[-0.05, 0.0, 0.05, 0.0]])
    close(rewards, [[-0.05, 0.0, 2.05, 0.0]])


def test_per_token_rewards_k3():
    # k3 = exp(-(logp - ref)) - 1 + (logp - ref): [e^-0.5 - 0.5, 0, e^0.5 - 1.5]
    logprobs = torch.tensor([[-1.0, -2.0, -3.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.5]])
    rewards, kl, _ = per_token_rewards(
        torch.tensor([1.0]), logprobs, ref_logprobs, torch.ones(1, 3), 0.1, kl_estimator="k3"
    )
    k3 = [math.exp(-0.5) - 0.5, 0.0, math.exp(0.5) - 1.5]
    close(kl, [k3])
    close(rewards, [[-0.1 * k3[0], 0.0, 1.0 - 0.1 * k3[2]]])
    with pytest.raises(ValueError, match="kl_estimator"):
        per_token_rewards(torch.zeros(1), logprobs, ref_logprobs, torch.ones(1, 3), 0.1, kl_estimator="k2")


def test_per_token_rewards_puts_score_at_last_real_token_of_each_row():
    zeros = torch.zeros(2, 4)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]])
    rewards, _, _ = per_token_rewards(torch.tensor([3.0, -1.0]), zeros, zeros, mask, kl_coef=0.5)
    close(rewards, [[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]])


def test_paid_scores_clip_then_penalise():
    scores = torch.tensor([1.0, 1.0, -0.5])
    ended = torch.tensor([True, False, False])
    close(paid_scores(scores, ended, missing_eos_penalty=2.0), [1.0, -1.0, -2.5])
    close(paid_scores(scores, ended), [1.0, 1.0, -0.5])
    # clip 1, penalty 5: finished 9 -> 1; cut off 9 -> 1 - 5 = -4 and -9 -> -1 - 5 = -6. Penalising first would
    # clip both cut-off answers to -1: the penalty would be worth 2, not 5.
    scores = torch.tensor([9.0, 9.0, -9.0])
    close(paid_scores(scores, ended, score_clip=1.0, missing_eos_penalty=5.0), [1.0, -4.0, -6.0])
