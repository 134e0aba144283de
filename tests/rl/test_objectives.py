"""KL estimators and the clipped ratio objective against numbers worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from lightalign.rl.objectives import clipped_ratio_loss, kl_estimate


def close(actual: torch.Tensor, expected: list | float) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-6, rtol=1e-6)


def test_k1_and_k3_by_hand():
    # log π - log π_ref = [0.5, 0, -0.5]; k3 = e^{-d} - 1 + d
    logprobs = torch.tensor([[-1.0, -2.0, -3.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.5]])
    close(kl_estimate(logprobs, ref_logprobs, "k1"), [[0.5, 0.0, -0.5]])
    close(kl_estimate(logprobs, ref_logprobs, "k3"), [[math.exp(-0.5) - 0.5, 0.0, math.exp(0.5) - 1.5]])


def test_k3_is_zero_for_equal_models_and_positive_otherwise():
    logprobs = torch.randn(3, 5)
    assert torch.equal(kl_estimate(logprobs, logprobs.clone(), "k3"), torch.zeros(3, 5))
    assert (kl_estimate(logprobs, logprobs + 0.1 * torch.randn(3, 5), "k3") > 0).all()


def test_unknown_estimator_is_refused():
    with pytest.raises(ValueError, match="'k1' or 'k3', got 'k2'"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k2")  # type: ignore[arg-type]


def test_clipped_ratio_loss_by_hand():
    # r = [1.5, 0.5, 1.0], A = [1, 1, -1], ε = 0.2:
    # -A·r = [-1.5, -0.5, 1.0], -A·clip(r) = [-1.2, -0.8, 1.0] -> max [-1.2, -0.5, 1.0]; the clip acts on token 0
    new = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
    loss, clipped, ratio = clipped_ratio_loss(new, torch.zeros(1, 3), torch.tensor([[1.0, 1.0, -1.0]]), 0.2)
    close(loss, [[-1.2, -0.5, 1.0]])
    assert clipped.tolist() == [[True, False, False]]
    close(ratio, [[1.5, 0.5, 1.0]])


def test_one_advantage_per_answer_broadcasts_over_its_tokens():
    new = torch.zeros(2, 3, requires_grad=True)
    loss, _, _ = clipped_ratio_loss(new, torch.zeros(2, 3), torch.tensor([[2.0], [-1.0]]), 0.2)
    close(loss, [[-2.0] * 3, [1.0] * 3])
