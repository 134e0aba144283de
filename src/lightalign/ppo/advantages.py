"""Rewards, advantages and returns for PPO on right-padded response tensors.

Every tensor here is ``[B, T]`` over the *response* tokens only (the prompt is not part of it), with a
``mask`` that is 1 for real response tokens, up to and including the first EOS, and 0 for the padding
after it. Padding positions never change a result: they are zeroed on the way in and on the way out.

Conventions follow the RLHF-with-PPO literature (Ziegler et al. 2019; Huang et al., "The N
implementation details of RLHF with PPO"): the reward model's scalar score is paid at the last real
token, every token pays a KL penalty ``kl_coef * (logp - ref_logp)``, and GAE runs over the response
as one episode that ends at the last real token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightalign.rl.objectives import KLEstimator, kl_estimate


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last real token of each row of a right-padded ``mask`` ``[B, T]`` -> ``[B]``.

    A row with no real token gets index 0 (it cannot happen for a generated response, which always has
    at least one token, but it keeps the gather below in range).
    """
    return (mask.long().sum(dim=1) - 1).clamp(min=0)


def paid_scores(
    scores: Tensor, ended_with_eos: Tensor, *, score_clip: float | None = None, missing_eos_penalty: float | None = None
) -> Tensor:
    """What each answer's last token is paid: its score clipped to ``±score_clip``, then minus
    ``missing_eos_penalty`` if it was cut off before producing EOS.

    A truncated answer is judged by the reward model as if it were complete; without the penalty the policy
    can learn to ramble until ``max_new_tokens`` (TRL PPOv2's ``missing_eos_penalty``). The clip comes first:
    applied after the penalty it would bound the gap between a finished and a cut-off answer by ``2·clip``.

    Example:
        >>> paid_scores(torch.tensor([5.0, 5.0]), torch.tensor([True, False]), score_clip=1.0, missing_eos_penalty=3.0)
        tensor([ 1., -2.])
    """
    if score_clip is not None:
        scores = scores.clamp(-score_clip, score_clip)
    if missing_eos_penalty is not None:
        scores = torch.where(ended_with_eos.bool(), scores, scores - missing_eos_penalty)
    return scores


def per_token_rewards(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    kl_coef: float,
    *,
    kl_estimator: KLEstimator = "k1",
) -> tuple[Tensor, Tensor, Tensor]:
    """Turn one scalar score per response into a per-token reward with a KL penalty.

    ``reward[t] = -kl_coef * kl[t]``, plus the score at the last real token.

    Args:
        scores: what the last tokens are paid ``[B]`` (:func:`paid_scores`: clipped, penalised).
        logprobs: log-probabilities of the response tokens under the policy that sampled them ``[B, T]``.
        ref_logprobs: the same under the frozen reference model ``[B, T]``.
        mask: 1 for real response tokens, 0 for padding ``[B, T]``.
        kl_coef: β, e.g. ``kl_controller.value``.
        kl_estimator: ``"k1"`` (the classic choice) or ``"k3"``
            (:func:`~lightalign.rl.objectives.kl_estimate`).

    Returns:
        ``(rewards, kl, non_score_reward)``, each ``[B, T]`` and 0 at padding. ``kl.sum(1).mean()`` is the
        per-sequence KL to log and to feed :class:`~lightalign.ppo.kl_control.AdaptiveKLController`.
    """
    valid = mask.bool()
    kl = kl_estimate(logprobs, ref_logprobs, kl_estimator)
    kl = torch.where(valid, kl, torch.zeros_like(kl))
    non_score_reward = -kl_coef * kl
    rewards = non_score_reward.clone()
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards, kl, non_score_reward


def gae_advantages(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over right-padded responses.

    ``delta[t] = r[t] + gamma * V[t+1] - V[t]`` and ``A[t] = delta[t] + gamma * lam * A[t+1]``, where
    ``V`` and ``A`` past the last real token are 0 (the episode ends there: no bootstrap value).

    Args:
        rewards: per-token rewards ``[B, T]`` (from :func:`per_token_rewards`).
        values: value estimates of the state before each response token ``[B, T]``.
        mask: 1 for real tokens, 0 for the padding after EOS ``[B, T]``; must be a contiguous prefix.
        gamma: discount (1.0 is usual in RLHF).
        lam: GAE λ (0.95 is usual).

    Returns:
        ``(advantages, returns)``, both ``[B, T]``, 0 at padding; ``returns = advantages + values`` are the
        value-function targets. Whiten the advantages afterwards with
        :func:`~lightalign.rl.masked.masked_whiten`.
    """
    valid = mask.bool()
    # Zero the padding so that a stale value or reward there can never be bootstrapped from.
    rewards = torch.where(valid, rewards, torch.zeros_like(rewards))
    values = torch.where(valid, values, torch.zeros_like(values))
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(steps)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    advantages = torch.where(valid, advantages, torch.zeros_like(advantages))
    returns = advantages + values
    return advantages, returns
