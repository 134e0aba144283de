"""GRPO's loss: aggregations by hand, the gradient's sign, the KL term, accumulation over micro-batches."""

from __future__ import annotations

import math

import pytest
import torch

from lightalign.grpo.losses import aggregate_tokens, grpo_loss

# Two answers: 3 real tokens and 1 real token (then padding), max_new_tokens 4.
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


def close(actual: torch.Tensor, expected: float | list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-6, rtol=1e-6)


def test_aggregations_by_hand():
    # per-token losses 1, 2, 3 | 6; padding holds garbage that must not count
    per_token = torch.tensor([[1.0, 2.0, 3.0, float("nan")], [6.0, 99.0, 99.0, 99.0]])
    close(aggregate_tokens(per_token, MASK, "token"), (1 + 2 + 3 + 6) / 4)  # every token weighs the same
    close(aggregate_tokens(per_token, MASK, "sequence"), (2.0 + 6.0) / 2)  # every answer weighs the same
    close(aggregate_tokens(per_token, MASK, "constant", max_new_tokens=4), 12 / (2 * 4))  # no length at all
    with pytest.raises(ValueError, match="needs max_new_tokens"):
        aggregate_tokens(per_token, MASK, "constant")


@pytest.mark.parametrize("how", ["token", "sequence", "constant"])
def test_micro_batch_losses_add_up_to_the_batch_loss(how):
    per_token = torch.tensor([[1.0, 2.0, 3.0, 0.0], [6.0, 0.0, 0.0, 0.0]])
    whole = aggregate_tokens(per_token, MASK, how, max_new_tokens=4)
    totals = {"num_sequences": 2, "num_tokens": int(MASK.sum()), "max_new_tokens": 4}
    parts = [aggregate_tokens(per_token[i : i + 1], MASK[i : i + 1], how, **totals) for i in range(2)]
    close(parts[0] + parts[1], whole.item())


def test_gradient_raises_the_probability_of_better_answers_and_lowers_worse_ones():
    # first step on a batch: old = new, ratio 1, no clipping; loss = -A · r per token
    new = torch.full((2, 4), -1.0, requires_grad=True)
    loss, stats = grpo_loss(new, new.detach(), torch.tensor([1.0, -1.0]), MASK, clip_range=0.2)
    close(loss, (-3 * 1.0 + 1 * 1.0) / 4)  # token aggregation: (-1 -1 -1 +1) / 4
    loss.backward()
    # gradient descent moves log-probs against the gradient: up for A > 0, down for A < 0, nothing at padding
    assert (new.grad[0, :3] < 0).all() and (new.grad[1, :1] > 0).all()
    assert (new.grad[0, 3] == 0) and (new.grad[1, 1:] == 0).all()
    close(stats["clip_frac"], 0.0)
    close(stats["ratio_mean"], 1.0)
    assert "kl" not in stats  # beta 0: no KL term


def test_the_clip_stops_the_gradient_once_the_ratio_left_the_trust_region():
    # a later step on the same batch: r = 1.5 > 1 + ε with A > 0, the clipped term holds it: no gradient
    old = torch.zeros(1, 1)
    new = torch.log(torch.tensor([[1.5]])).requires_grad_(True)
    loss, stats = grpo_loss(new, old, torch.tensor([1.0]), torch.ones(1, 1), clip_range=0.2)
    close(loss, -1.2)
    loss.backward()
    close(new.grad, [[0.0]])
    close(stats["clip_frac"], 1.0)


def test_kl_term_is_zero_when_the_policy_is_the_reference_and_positive_when_not():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-0.7, -1.0, -1.0, -1.0]])
    advantages = torch.tensor([0.5, -0.5])
    plain, _ = grpo_loss(logprobs, logprobs, advantages, MASK, clip_range=0.2)

    same = logprobs.clone().requires_grad_(True)
    loss, stats = grpo_loss(same, logprobs, advantages, MASK, clip_range=0.2, beta=0.1, ref_logprobs=logprobs)
    close(stats["kl"], 0.0)
    close(loss, plain.item())  # the KL term adds nothing ...
    loss.backward()
    surrogate_grad = same.grad.clone()
    # ... and pulls nowhere: the gradient is the surrogate's alone, -A / (number of real tokens)
    close(surrogate_grad, [[-0.5 / 4] * 3 + [0.0], [0.5 / 4, 0.0, 0.0, 0.0]])

    # a reference 0.5 nats less likely on every token: k3 = e^{-0.5} - 1 + 0.5 per token
    ref = logprobs - 0.5
    moved = logprobs.clone().requires_grad_(True)
    loss, stats = grpo_loss(moved, logprobs, advantages, MASK, clip_range=0.2, beta=0.1, ref_logprobs=ref)
    k3 = math.exp(-0.5) - 0.5
    close(stats["kl"], k3)
    close(loss, plain.item() + 0.1 * k3)
    loss.backward()
    # d k3 / d logp = 1 - e^{ref - logp} = 1 - e^{-0.5} > 0: the KL term pushes the log-probs down, to the reference
    close(moved.grad - surrogate_grad, (0.1 * (1 - math.exp(-0.5)) / 4 * MASK).tolist())


def test_beta_without_a_reference_is_refused():
    with pytest.raises(ValueError, match="reference's log-probs"):
        grpo_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), clip_range=0.2, beta=0.1)
