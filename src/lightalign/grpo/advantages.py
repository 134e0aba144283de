"""Advantages within groups: each prompt's G sampled answers are scored against each other, no value model.

Scores arrive flat, group by group: ``[a_1 ... a_G]`` of the first prompt, then of the second, ... (``N·G``
values). Every option subtracts a baseline built from the group itself, so a group whose answers all score
the same gets advantage 0 for every answer (nothing to learn from it, and no NaN):

- ``grpo`` (Shao et al. 2024, DeepSeekMath): ``(r - mean) / (std + eps)``, std Bessel-corrected as in TRL;
- ``rloo`` (Ahmadian et al. 2024): ``r_i - mean of the other G-1 scores`` = ``G/(G-1) · (r_i - mean)``;
- ``dr_grpo`` (Liu et al. 2025, "Understanding R1-Zero-like training"): ``r - mean``. Dividing by the std
  weights groups whose answers barely differ (too easy or too hard) the most; Dr. GRPO drops it (and the
  per-answer length normalisation: :func:`lightalign.grpo.losses.aggregate_tokens`'s ``"constant"``).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

Advantage = Literal["grpo", "rloo", "dr_grpo"]


def group_advantages(scores: Tensor, group_size: int, method: Advantage = "grpo", eps: float = 1e-4) -> Tensor:
    """One advantage per answer, ``[N·G]`` -> ``[N·G]`` (same order).

    Args:
        scores: the rewards of ``N`` groups of ``group_size`` answers, group by group.
        group_size: G, at least 2 (a lone answer has no baseline).
        method: ``"grpo"``, ``"rloo"`` or ``"dr_grpo"`` (see the module docstring).
        eps: added to the std (``grpo`` only), so a group of equal scores divides 0 by ``eps``.

    Example:
        >>> import torch
        >>> group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, "rloo")
        tensor([ 1.0000, -0.3333, -0.3333, -0.3333])
    """
    if group_size < 2:
        raise ValueError(f"group_size={group_size}: a group needs at least 2 answers to have a baseline")
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    groups = scores.float().view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if method == "grpo":
        advantages = centred / (groups.std(dim=1, keepdim=True) + eps)
    elif method == "rloo":
        advantages = centred * group_size / (group_size - 1)
    elif method == "dr_grpo":
        advantages = centred
    else:
        raise ValueError(f"advantage method must be 'grpo', 'rloo' or 'dr_grpo', got {method!r}")
    return advantages.reshape(-1)


def zero_spread_fraction(scores: Tensor, group_size: int) -> float:
    """The share of groups whose answers all scored the same: they teach nothing this step (advantage 0).

    Example:
        >>> import torch
        >>> zero_spread_fraction(torch.tensor([1.0, 1.0, 0.0, 1.0]), 2)
        0.5
    """
    groups = scores.view(-1, group_size)
    return (groups.amax(dim=1) == groups.amin(dim=1)).float().mean().item()
