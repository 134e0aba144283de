"""The KL estimators and the clipped policy-ratio objective, per token, shared by PPO and GRPO.

Both return per-token ``[B, T]`` tensors and leave the reduction to the caller: PPO averages over the real
tokens of a mini-batch, GRPO offers several aggregations (:func:`lightalign.grpo.losses.aggregate_tokens`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k3"]


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of ``KL(π || π_ref)`` from tokens sampled from ``π``, ``[B, T]``.

    ``k1 = log π - log π_ref`` (unbiased, can be negative per token); ``k3 = (r - 1) - log r`` with
    ``r = π_ref / π`` (unbiased too, never negative, lower variance: Schulman's "Approximating KL
    divergence"; the GRPO paper's estimator). Zero wherever the two log-probs are equal.

    Example:
        >>> kl_estimate(torch.tensor([0.0, -1.0]), torch.tensor([0.0, -1.0 - 0.5]), "k3")
        tensor([0.0000, 0.1065])
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        # expm1(x) = e^x - 1, exact for small x: most tokens' log-ratio is near 0.
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {estimator!r}")


def clipped_ratio_loss(
    new_logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_range: float
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017) per token, as a loss to minimise.

    ``loss = max(-A·r, -A·clip(r, 1 - ε, 1 + ε))`` with ``r = exp(new - old)``: the ratio earns nothing
    beyond ``1 ± ε`` in the direction the advantage pushes it, so a batch reused for several
    optimisation steps cannot move the policy far.

    Args:
        new_logprobs: log-probs of the sampled tokens under the policy being trained ``[B, T]`` (with grad).
        old_logprobs: the same when they were sampled (detached here) ``[B, T]``.
        advantages: ``[B, T]``, or ``[B, 1]`` for one advantage per answer (detached here).
        clip_range: ε, e.g. 0.2.

    Returns:
        ``(loss, clipped, ratio)``, each ``[B, T]``: the per-token loss, whether the clipped term was the one
        used (for ``clip_frac``), and ``r``. Padding positions are meaningless; the caller masks them.
    """
    ratio = torch.exp(new_logprobs - old_logprobs.detach())
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped), clipped > unclipped, ratio
