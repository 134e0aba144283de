"""PPO losses and diagnostics against numbers worked out by hand in the comments."""

from __future__ import annotations

import math

import torch

from lightalign.ppo.losses import entropy_from_logits, explained_variance, policy_loss, value_loss


def close(actual: torch.Tensor, expected: list | float) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-5, rtol=1e-5)


def test_policy_loss_by_hand():
    # ratios r = [1.5, 0.5, 1.0], advantages [1, 1, -1], eps = 0.2
    # token 0: -A*r = -1.5, -A*clip(r) = -1.2 -> max -1.2 (clipped term used)
    # token 1: -A*r = -0.5, -A*clip(r) = -0.8 -> max -0.5
    # token 2: -A*r =  1.0, -A*clip(r) =  1.0 -> max  1.0
    # loss = (-1.2 - 0.5 + 1.0) / 3; clip_frac = 1/3
    # approx_kl (k3) = mean((r - 1) - log r) = [0.5 - ln 1.5, -0.5 - ln 0.5, 0] / 3
    new = torch.log(torch.tensor([[1.5, 0.5, 1.0]])).requires_grad_(True)
    old = torch.zeros(1, 3)
    advantages = torch.tensor([[1.0, 1.0, -1.0]])
    loss, stats = policy_loss(new, old, advantages, torch.ones(1, 3), clip_range=0.2)
    close(loss, -0.7 / 3)
    close(stats["clip_frac"], 1 / 3)
    close(stats["approx_kl"], ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 3)
    close(stats["ratio_mean"], 1.0)
    # d loss / d new_logprob = -A * r / 3 where the unclipped term is used, 0 where the clip holds it.
    loss.backward()
    close(new.grad, [[0.0, -0.5 / 3, 1.0 / 3]])


def test_policy_loss_padding_does_not_change_results():
    new = torch.log(torch.tensor([[1.5, 0.5, 1.0, 50.0]]))
    old = torch.tensor([[0.0, 0.0, 0.0, -30.0]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, 1e6]])
    loss, stats = policy_loss(new, old, advantages, torch.tensor([[1, 1, 1, 0]]), clip_range=0.2)
    close(loss, -0.7 / 3)
    close(stats["clip_frac"], 1 / 3)


def test_value_loss_by_hand():
    # old [0, 0], new [0.5, -0.1], returns [1, 1], c = 0.2
    # token 0: clipped value 0.2; (0.5-1)^2 = 0.25 vs (0.2-1)^2 = 0.64 -> 0.64 (clipped error larger)
    # token 1: within the clip;   (-0.1-1)^2 = 1.21 both              -> 1.21
    # loss = 0.5 * (0.64 + 1.21) / 2 = 0.4625; value_clip_frac = 1/2
    new = torch.tensor([[0.5, -0.1, 123.0]])
    old = torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, -50.0]])
    loss, stats = value_loss(new, old, returns, torch.tensor([[1, 1, 0]]), clip_range_value=0.2)
    close(loss, 0.4625)
    close(stats["value_clip_frac"], 0.5)
    close(stats["value_mean"], 0.2)


def test_entropy_from_logits():
    # uniform over 4 tokens: ln 4; a one-hot distribution (others -inf, as after top-k): 0, not NaN.
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [5.0, -math.inf, -math.inf, -math.inf], [9.0, 1.0, 2.0, 3.0]]])
    close(entropy_from_logits(logits, torch.tensor([[1, 1, 0]])), math.log(4) / 2)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    close(explained_variance(returns, returns, mask), 1.0)
    # predicting the mean explains nothing
    close(explained_variance(torch.full_like(returns, 2.0), returns, mask), 0.0)
    # a constant offset leaves a residual of variance 0 (explained variance ignores bias)
    close(explained_variance(returns + 5.0, returns, mask), 1.0)
    assert torch.isnan(explained_variance(returns, torch.ones(1, 4), mask))
