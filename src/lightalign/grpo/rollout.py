"""The sampling half of a GRPO step: G answers per prompt, their rewards, advantages within each group.

:func:`sample_groups` runs without gradients: the policy samples every answer of the step in one batch, the
reference scores them when the loss has a KL term (``beta > 0``), the reward parts score the decoded answers,
and each answer's advantage is measured against the other answers to its prompt. The result,
:class:`GroupRollout`, is what :func:`lightalign.grpo.update.grpo_update` optimises on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from lightalign.data.collators import pad_prompts
from lightalign.data.types import PromptOnly
from lightalign.generation import decode_answers, dense_decoding, sample_and_score, stop_token_ids
from lightalign.grpo.advantages import Advantage, group_advantages, zero_spread_fraction
from lightalign.grpo.rewards import RewardScores, WeightedReward
from lightalign.rl.batches import AnswerBatch


@dataclass
class GroupBatch(AnswerBatch):
    """What the optimisation reads of one step's answers: ``N`` prompts × ``G`` answers, answer ``g`` of prompt
    ``i`` in row ``i·G + g``.

    ``input_ids``/``attention_mask`` are ``[N·G, P + T]`` (left-padded prompts, right-padded answers from column
    ``response_start``); ``mask``, ``old_logprobs``, ``ref_logprobs`` ``[N·G, T]``; ``advantages`` ``[N·G]``.
    ``mask`` marks the answer tokens the loss counts: every real token, or none of an answer cut off at
    ``max_new_tokens`` when those are left out (``mask_truncated``).
    ``old_logprobs`` (the sampling policy's) is None when every answer is optimised on exactly once, before the
    policy moves: the ratio's denominator is then the new log-prob itself, detached. ``ref_logprobs`` is None
    without a KL term.
    """

    advantages: Tensor
    old_logprobs: Tensor | None
    ref_logprobs: Tensor | None


@dataclass
class GroupRollout:
    """One step's answers: the :class:`GroupBatch` to optimise on, and what the log reports of them."""

    batch: GroupBatch
    group_size: int
    answers: list[str]
    rewards: RewardScores
    answer_tokens: Tensor  # [N·G] each answer's length, its stop token included
    ended_with_eos: Tensor

    def stats(self) -> dict[str, float]:
        """Per-step metrics: the reward and each part's mean (``reward/<name>``), the within-group spread, the
        share of groups that teach nothing, the answers' length and how many ended with a stop token."""
        total = torch.tensor(self.rewards.total)
        groups = total.view(-1, self.group_size)
        return {
            **self.rewards.means(),
            "reward_std": groups.std(dim=1).mean().item(),
            "zero_spread_fraction": zero_spread_fraction(total, self.group_size),
            "answer_tokens": self.answer_tokens.float().mean().item(),
            "eos_fraction": self.ended_with_eos.float().mean().item(),
        }


@torch.no_grad()
def sample_groups(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[PromptOnly],
    prompt_ids: Sequence[Sequence[int]],
    reward: WeightedReward,
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    advantage: Advantage = "grpo",
    scale_eps: float = 1e-4,
    reference: Callable[[], AbstractContextManager] | None = None,
    keep_old_logprobs: bool = False,
    mask_truncated: bool = False,
    forward_batch_size: int = 8,
    dense_weights: str = "auto",
) -> GroupRollout:
    """Sample ``group_size`` answers to each prompt from ``model`` (the policy, its adapter active), score them.

    Args:
        model: the policy; put in eval mode here (generation with a KV cache, no dropout).
        tokenizer: its tokenizer (stop tokens, decoding).
        prompts: the prompts, for the reward parts.
        prompt_ids: their ids with the assistant header (:func:`lightalign.data.tokenize.tokenize_prompts`).
        reward: the weighted reward parts.
        group_size: G.
        max_new_tokens, temperature, top_p: sampling; the log-probs use the same temperature.
        advantage, scale_eps: :func:`~lightalign.grpo.advantages.group_advantages`.
        reference: a context manager factory under which ``model`` is the reference; None: no KL term.
        keep_old_logprobs: score the answers under the sampling policy too (needed when the policy moves before
            the last optimisation step on them: several mini-batches, or several iterations).
        mask_truncated: leave answers cut off at ``max_new_tokens`` (no stop token) out of the loss, though their
            rewards still count in their group's baseline: a truncated answer is not the answer the model would
            give, and reinforcing a right one teaches rambling past it (DAPO's overlong filtering, TRL's
            ``mask_truncated_completions``).
        forward_batch_size: rows per scoring forward pass (memory bound).
        dense_weights: how the policy decodes (``generation.dense_weights``, see
            :func:`~lightalign.generation.dense_decoding`).

    Raises:
        RewardError: a reward part raised, or returned the wrong number of scores or a non-finite one.
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in pad_prompts(list(prompt_ids), tokenizer.pad_token_id).items()}
    model.eval()
    # one dense copy of the 4-bit layers for sampling, scoring and a reward model on the same base
    with dense_decoding(model, dense_weights):
        # row i·G + g: answer g to prompt i; each prompt runs once for its G answers
        sampled = sample_and_score(model, batch["input_ids"], batch["attention_mask"], reference=reference,
                                   num_samples=group_size, score_policy=keep_old_logprobs,
                                   max_new_tokens=max_new_tokens, eos_token_id=stop_token_ids(tokenizer),
                                   pad_token_id=tokenizer.pad_token_id, temperature=temperature, top_p=top_p,
                                   forward_batch_size=forward_batch_size, dense_weights="off")  # this block's copy
        responses = sampled.responses
        answers = decode_answers(tokenizer, responses.tokens, responses.mask)
        rewards = reward.score([p.prompt for p in prompts for _ in range(group_size)], answers)
    advantages = group_advantages(torch.tensor(rewards.total), group_size, advantage, scale_eps).to(device)
    counted = responses.mask * responses.ended_with_eos.unsqueeze(1) if mask_truncated else responses.mask
    return GroupRollout(
        batch=GroupBatch(sampled.input_ids, sampled.attention_mask, sampled.response_start, counted, advantages,
                         sampled.logprobs, sampled.ref_logprobs),
        group_size=group_size,
        answers=answers,
        rewards=rewards,
        answer_tokens=responses.mask.sum(1),
        ended_with_eos=responses.ended_with_eos,
    )
