"""GRPO's loss: the clipped policy-ratio objective per token plus ``β·KL`` to the reference, aggregated.

Per token ``t`` of answer ``i`` (Shao et al. 2024, eq. 3)::

    l[i, t] = max(-A_i·r, -A_i·clip(r, 1 - ε, 1 + ε)) + β·KL_k3[i, t],   r = π(y_t) / π_old(y_t)

with one advantage ``A_i`` per answer (:mod:`lightalign.grpo.advantages`). The KL term is in the loss,
not in the reward as PPO has it, and the k3 estimator's gradient pulls each sampled token's probability
towards the reference's. How the ``l[i, t]`` become one number matters (:func:`aggregate_tokens`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightalign.rl.masked import masked_mean
from lightalign.rl.objectives import KLEstimator, clipped_ratio_loss, kl_estimate

Aggregation = Literal["token", "sequence", "constant"]


def aggregate_tokens(
    per_token: Tensor,
    mask: Tensor,
    how: Aggregation,
    *,
    max_new_tokens: int | None = None,
    num_sequences: int | None = None,
    num_tokens: int | None = None,
) -> Tensor:
    """One loss from per-token losses ``[B, T]`` over the real tokens (``mask``).

    - ``"token"``: the sum over every real token of the batch / their number (DAPO, TRL's default): each
      token weighs the same, so long answers weigh more than short ones.
    - ``"sequence"``: the mean over each answer's tokens, then the mean over answers (the GRPO paper): each
      answer weighs the same, so a token of a short answer weighs more than one of a long answer, which
      favours short right answers and long wrong ones (the length bias Dr. GRPO points out).
    - ``"constant"``: the sum / (answers · ``max_new_tokens``) (Dr. GRPO): no length normalisation at all.

    ``num_sequences`` and ``num_tokens`` default to this batch's; pass the whole mini-batch's when the loss
    of a micro-batch is accumulated, so that the micro-batch losses add up to the mini-batch's loss.

    Example:
        >>> per_token = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
        >>> mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
        >>> [round(aggregate_tokens(per_token, mask, how, max_new_tokens=3).item(), 4)
        ...  for how in ("token", "sequence", "constant")]
        [1.75, 2.5, 1.1667]
    """
    real = mask.bool()
    losses = torch.where(real, per_token, torch.zeros_like(per_token))
    sequences = per_token.shape[0] if num_sequences is None else num_sequences
    if how == "token":
        count = real.sum().clamp(min=1) if num_tokens is None else max(num_tokens, 1)
        return losses.sum() / count
    if how == "sequence":
        return (losses.sum(dim=1) / real.sum(dim=1).clamp(min=1)).sum() / max(sequences, 1)
    if how == "constant":
        if not max_new_tokens:
            raise ValueError("the 'constant' aggregation needs max_new_tokens, its normaliser")
        return losses.sum() / (max(sequences, 1) * max_new_tokens)
    raise ValueError(f"aggregation must be 'token', 'sequence' or 'constant', got {how!r}")


def grpo_loss(
    new_logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_range: float,
    beta: float = 0.0,
    ref_logprobs: Tensor | None = None,
    kl_estimator: KLEstimator = "k3",
    aggregation: Aggregation = "token",
    max_new_tokens: int | None = None,
    num_sequences: int | None = None,
    num_tokens: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO loss of a batch of answers (see the module docstring), to minimise.

    Args:
        new_logprobs: log-probs of the answer tokens under the policy being trained ``[B, T]`` (with grad).
        old_logprobs: the same when the answers were sampled ``[B, T]``; equal to ``new_logprobs`` on the first
            optimisation step of a batch, when the ratio is 1 and the clip does nothing.
        advantages: one per answer ``[B]``.
        mask: 1 for real answer tokens ``[B, T]``.
        clip_range: ε.
        beta: weight of the KL term; 0 leaves it out (and needs no ``ref_logprobs``).
        ref_logprobs: the reference's log-probs of the same tokens ``[B, T]``.
        kl_estimator: ``"k3"`` (the GRPO paper) or ``"k1"``.
        aggregation, max_new_tokens, num_sequences, num_tokens: see :func:`aggregate_tokens`.

    Returns:
        ``(loss, stats)``; ``stats`` (detached, means over real tokens): ``clip_frac``, ``ratio_mean`` and,
        with ``beta > 0``, ``kl`` (per token).
    """
    per_token, clipped, ratio = clipped_ratio_loss(new_logprobs, old_logprobs, advantages.unsqueeze(1), clip_range)
    stats: dict[str, Tensor] = {}
    if beta > 0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs the reference's log-probs")
        kl = kl_estimate(new_logprobs, ref_logprobs.detach(), kl_estimator)
        per_token = per_token + beta * kl
        stats["kl"] = masked_mean(kl.detach(), mask)
    loss = aggregate_tokens(per_token, mask, aggregation, max_new_tokens=max_new_tokens,
                            num_sequences=num_sequences, num_tokens=num_tokens)
    with torch.no_grad():
        stats["clip_frac"] = masked_mean(clipped.to(ratio.dtype), mask)
        stats["ratio_mean"] = masked_mean(ratio, mask)
    return loss, stats
