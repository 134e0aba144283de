"""PPO losses and diagnostics over masked response tokens ``[B, T]``.

Losses are token-level means over the real tokens of the mini-batch (padding after EOS is excluded), as
in TRL's PPOv2. Stats are detached scalar tensors, so logging them costs no device sync until the caller
calls ``.item()``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightalign.rl.masked import masked_mean, masked_var
from lightalign.rl.objectives import clipped_ratio_loss, kl_estimate


def policy_loss(
    new_logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate objective of PPO (Schulman et al. 2017), as a loss to minimise: the mean over real
    tokens of :func:`~lightalign.rl.objectives.clipped_ratio_loss`.

    Args:
        new_logprobs: log-probabilities of the response tokens under the policy being trained ``[B, T]``.
        old_logprobs: the same, recorded at rollout time (no gradient) ``[B, T]``.
        advantages: (whitened) advantages ``[B, T]``.
        mask: 1 for real response tokens ``[B, T]``.
        clip_range: ε, e.g. 0.2.

    Returns:
        ``(loss, stats)``. ``stats``: ``clip_frac`` (share of tokens where the clipped term was used),
        ``approx_kl`` (k3 estimator ``mean((r - 1) - log r)`` of KL(old || new), >= 0, as in "The 37
        implementation details of PPO"), ``ratio_mean``.
    """
    per_token, clipped, ratio = clipped_ratio_loss(new_logprobs, old_logprobs, advantages, clip_range)
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean(clipped.to(ratio.dtype), mask),
            # KL(old || new) on tokens sampled from old: k3 with the roles of policy and reference swapped
            "approx_kl": masked_mean(kl_estimate(old_logprobs, new_logprobs, "k3"), mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(
    new_values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range_value: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss: ``0.5 * mean(max((V - R)^2, (V_clip - R)^2))``.

    ``V_clip = V_old + clip(V - V_old, -c, c)`` keeps the value function from moving far from the values
    the advantages were computed with (implementation detail #9 of "The 37 implementation details").

    Args:
        new_values: values predicted by the value model being trained ``[B, T]``.
        old_values: values recorded at rollout time ``[B, T]``.
        returns: targets, ``advantages + old_values`` before whitening ``[B, T]``.
        mask: 1 for real response tokens ``[B, T]``.
        clip_range_value: c, in the reward's units (e.g. 0.2).

    Returns:
        ``(loss, stats)``; ``stats``: ``value_clip_frac`` (share of tokens where the clipped error was the
        larger one), ``value_mean``.
    """
    old_values = old_values.detach()
    returns = returns.detach()
    clipped_values = old_values + torch.clamp(new_values - old_values, -clip_range_value, clip_range_value)
    unclipped_error = (new_values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        stats = {
            "value_clip_frac": masked_mean((clipped_error > unclipped_error).to(new_values.dtype), mask),
            "value_mean": masked_mean(new_values, mask),
        }
    return loss, stats


def entropy_from_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean entropy (nats) of the next-token distributions at the real response positions.

    Args:
        logits: ``[B, T, V]`` (already divided by the sampling temperature, so the entropy is that of the
            distribution actually sampled from).
        mask: ``[B, T]``.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    # xlogy(0, 0) = 0: a token masked out with -inf logits (e.g. by top-k) adds nothing instead of NaN.
    entropy = -torch.special.xlogy(probs, probs).sum(dim=-1)
    return masked_mean(entropy, mask)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """``1 - Var(returns - values) / Var(returns)`` over the real tokens; NaN if the returns are constant.

    1 is a perfect value function, 0 is no better than predicting the mean, negative is worse than that.
    """
    values = values.detach().float()
    returns = returns.detach().float()
    var_returns = masked_var(returns, mask)
    var_residual = masked_var(returns - values, mask)
    return torch.where(var_returns > 0, 1.0 - var_residual / var_returns, torch.full_like(var_returns, torch.nan))
