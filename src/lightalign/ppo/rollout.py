"""The experience half of a PPO update: sample answers, score them, turn scores into advantages.

:func:`collect_rollout` runs every role of :class:`~lightalign.ppo.roles.SharedBaseRoles` once, without
gradients: the policy samples and records its log-probs, the reference its log-probs, the value role its
values, and the reward (a reward model or any callable) scores the decoded answers. The result, a
:class:`Rollout`, is what :func:`lightalign.ppo.update.ppo_update` optimises on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from lightalign.config.schema import PPOSettings
from lightalign.data.collators import pad_prompts
from lightalign.data.types import PromptOnly
from lightalign.generation import decode_answers, dense_decoding, sample_and_score, stop_token_ids
from lightalign.models.roles import use_reference
from lightalign.ppo.advantages import gae_advantages, paid_scores, per_token_rewards
from lightalign.ppo.rewards import RewardFn, score_answers
from lightalign.ppo.roles import SharedBaseRoles
from lightalign.rl.batches import AnswerBatch
from lightalign.rl.masked import masked_mean, masked_whiten


@dataclass
class Rollout(AnswerBatch):
    """One batch of sampled answers and everything PPO optimises on.

    ``input_ids``/``attention_mask`` are ``[B, P + T]`` (left-padded prompts, right-padded responses);
    every other tensor but ``scores``/``ended_with_eos`` (``[B]``) is ``[B, T]`` over response tokens and
    0 at padding. ``returns = advantages + values`` use the advantages *before* whitening.
    """

    logprobs: Tensor
    ref_logprobs: Tensor
    values: Tensor
    rewards: Tensor
    advantages: Tensor
    returns: Tensor
    kl: Tensor
    non_score_reward: Tensor
    scores: Tensor  # as the reward returned them, before clipping and the missing-EOS penalty
    paid_scores: Tensor  # what the last token was paid: clipped, then penalised
    ended_with_eos: Tensor
    answers: list[str]

    def stats(self) -> dict[str, float]:
        """Per-update metrics of the experience (sums over an answer's tokens, means over answers)."""
        lengths = self.mask.sum(1).float()
        return {
            "score": self.scores.mean().item(),
            "kl": self.kl.sum(1).mean().item(),
            "non_score_reward": self.non_score_reward.sum(1).mean().item(),
            "total_reward": (self.paid_scores + self.non_score_reward.sum(1)).mean().item(),
            "answer_tokens": lengths.mean().item(),
            "eos_fraction": self.ended_with_eos.float().mean().item(),
            "value_mean": masked_mean(self.values, self.mask).item(),
            "advantage_std": self.advantages[self.mask.bool()].std().item() if self.mask.sum() > 1 else 0.0,
        }


@torch.no_grad()
def collect_rollout(
    roles: SharedBaseRoles,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[PromptOnly],
    prompt_ids: Sequence[Sequence[int]],
    reward_fn: RewardFn,
    settings: PPOSettings,
    *,
    kl_coef: float,
    forward_batch_size: int = 8,
    dense_weights: str = "auto",
) -> Rollout:
    """Sample one answer per prompt from the policy and compute rewards, values and advantages.

    Args:
        roles: the four roles on one base.
        tokenizer: its tokenizer (stop tokens, decoding).
        prompts: the prompts, for the reward (:func:`~lightalign.ppo.rewards.score_answers`).
        prompt_ids: their ids with the assistant header (:func:`lightalign.data.tokenize.tokenize_prompts`).
        reward_fn: ``(prompts, answers) -> scores``.
        settings: sampling, reward shaping and GAE settings.
        kl_coef: β for this batch (the KL controller's current value).
        forward_batch_size: rows per forward pass when scoring (memory bound).
        dense_weights: how the policy decodes (``generation.dense_weights``, see
            :func:`~lightalign.generation.dense_decoding`).

    Raises:
        NonFiniteLossError: the reward returned NaN or inf.
    """
    device = next(roles.model.parameters()).device
    batch = {k: v.to(device) for k, v in pad_prompts(list(prompt_ids), tokenizer.pad_token_id).items()}
    roles.model.eval()  # generation with a KV cache; the update switches back to train mode
    # one dense copy of the 4-bit layers for every forward of the rollout: sampling, the policy's, reference's and
    # value's scores, and a reward model on the same base (bit for bit the 4-bit layers' numbers, dequantised once)
    with dense_decoding(roles.model, dense_weights):
        sampled = sample_and_score(
            roles.activate_policy(),
            batch["input_ids"],
            batch["attention_mask"],
            reference=partial(use_reference, roles.model),
            max_new_tokens=settings.max_new_tokens,
            eos_token_id=stop_token_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            temperature=settings.temperature,  # the sampling temperature, which both log-probs use: one source
            top_k=settings.top_k,
            top_p=settings.top_p,
            forward_batch_size=forward_batch_size,
            dense_weights="off",  # this block's copy
        )
        input_ids, attention_mask, start = sampled.input_ids, sampled.attention_mask, sampled.response_start
        mask, logprobs, ref_logprobs = sampled.responses.mask, sampled.logprobs, sampled.ref_logprobs
        values = torch.cat([roles.values(input_ids[i : i + forward_batch_size],
                                         attention_mask[i : i + forward_batch_size], start)
                            for i in range(0, input_ids.shape[0], forward_batch_size)])
        roles.activate_policy()
        answers = decode_answers(tokenizer, sampled.responses.tokens, mask)
        scores = score_answers(reward_fn, prompts, answers).to(device)
    paid = paid_scores(scores, sampled.responses.ended_with_eos, score_clip=settings.score_clip,
                       missing_eos_penalty=settings.missing_eos_penalty)
    rewards, kl, non_score_reward = per_token_rewards(
        paid, logprobs, ref_logprobs, mask, kl_coef, kl_estimator=settings.kl_estimator  # type: ignore[arg-type]
    )
    if settings.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    values = torch.where(mask.bool(), values, torch.zeros_like(values))
    advantages, returns = gae_advantages(rewards, values, mask, settings.gamma, settings.lam)
    advantages = masked_whiten(advantages, mask)
    return Rollout(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_start=start,
        mask=mask,
        logprobs=torch.where(mask.bool(), logprobs, torch.zeros_like(logprobs)),
        ref_logprobs=torch.where(mask.bool(), ref_logprobs, torch.zeros_like(ref_logprobs)),
        values=values,
        rewards=rewards,
        advantages=advantages,
        returns=returns,
        kl=kl,
        non_score_reward=non_score_reward,
        scores=scores,
        paid_scores=paid,
        ended_with_eos=sampled.responses.ended_with_eos,
        answers=answers,
    )
