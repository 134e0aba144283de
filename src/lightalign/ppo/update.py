"""The optimisation half of a PPO update: several epochs of clipped policy and value losses over a rollout.

One optimiser step per mini-batch of ``minibatch_size`` rollouts, accumulated over micro-batches of
``micro_batch_size`` (gradient accumulation). Per micro-batch the policy loss is backpropagated *before*
the values are computed: with gradient checkpointing the forward pass is recomputed during ``backward``
under whatever adapter is active then, so each role gets its own backward while its adapter is active.
With demonstrations (``ppo.sft_weight``), each optimiser step also backpropagates the policy's SFT loss on a
batch of them, with the policy adapter active (:mod:`lightalign.rl.demonstrations`).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from tqdm.auto import tqdm

from lightalign.config.schema import PPOSettings
from lightalign.errors import NonFiniteLossError
from lightalign.memory import release_freed_memory
from lightalign.models.logprobs import logprobs_from_logits
from lightalign.ppo.losses import entropy_from_logits, explained_variance, policy_loss, value_loss
from lightalign.ppo.roles import SharedBaseRoles
from lightalign.ppo.rollout import Rollout
from lightalign.rl.demonstrations import DemonstrationBatches, demonstration_loss
from lightalign.rl.masked import masked_mean


def _check_finite(value: torch.Tensor, what: str) -> None:
    if not torch.isfinite(value).all():
        raise NonFiniteLossError(f"the {what} became {value.item()}")


def ppo_update(
    roles: SharedBaseRoles,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    settings: PPOSettings,
    *,
    minibatch_size: int,
    micro_batch_size: int,
    max_grad_norm: float | None = 1.0,
    demonstrations: DemonstrationBatches | None = None,
    demonstration_weight: float = 0.0,
    progress: bool = True,
) -> dict[str, float]:
    """Optimise the policy and value roles on ``rollout`` for ``settings.num_ppo_epochs`` epochs.

    Mini-batches are drawn by shuffling with the global torch RNG (checkpointed by the recipe, so a
    resumed run shuffles the same way).

    Args:
        roles: the shared-base roles; the optimiser must hold ``roles.trainable_parameters()``.
        optimizer: e.g. AdamW over those parameters.
        rollout: from :func:`lightalign.ppo.rollout.collect_rollout`.
        settings: clip ranges, loss weights, epochs.
        minibatch_size: rollouts per optimiser step; must divide ``rollout.size``.
        micro_batch_size: rollouts per forward/backward pass (gradient accumulation inside a mini-batch).
        max_grad_norm: clip the global gradient norm of policy and value parameters; None: no clipping.
        demonstrations, demonstration_weight: with both, every optimiser step also adds ``demonstration_weight``
            × the policy's SFT loss on the next batch of demonstrations (InstructGPT's PPO-ptx); the value role
            gets no gradient from it (its adapter is not active), though it counts in the clipped global norm.
        progress: show a progress bar over optimiser steps.

    Returns:
        Means over micro-batches: ``policy_loss``, ``value_loss``, ``entropy``, ``policy_clip_frac``,
        ``approx_kl``, ``ratio_mean``, ``value_clip_frac``, ``grad_norm``; and ``explained_variance`` of the
        rollout's values; with demonstrations ``sft_loss`` (their SFT loss, before weighting, a mean over
        optimiser steps).

    Raises:
        NonFiniteLossError: a loss or the gradient norm is NaN/inf (before the optimiser step, so the
            weights are still the last finite ones).
    """
    if rollout.size % minibatch_size:
        raise ValueError(f"ppo.batch_size={rollout.size} is not a multiple of the mini-batch size {minibatch_size} "
                         "(trainer.per_device_train_batch_size * trainer.gradient_accumulation_steps)")
    params = roles.trainable_parameters()
    totals: dict[str, float] = defaultdict(float)
    micro_steps = 0
    grad_norms: list[float] = []
    sft_losses: list[float] = []
    mix = demonstrations is not None and demonstration_weight > 0
    optimizer_steps = settings.num_ppo_epochs * (rollout.size // minibatch_size)
    roles.model.train()  # gradient checkpointing only runs in training mode; dropout is off in every role
    bar = tqdm(total=optimizer_steps, desc="ppo epochs", unit="step", leave=False, disable=not progress)
    try:
        for _ in range(settings.num_ppo_epochs):
            order = torch.randperm(rollout.size)
            for mb_start in range(0, rollout.size, minibatch_size):
                minibatch = order[mb_start : mb_start + minibatch_size]
                for micro_start in range(0, minibatch_size, micro_batch_size):
                    release_freed_memory()  # the last pass's freed activations: see lightalign.grpo.update
                    rows = minibatch[micro_start : micro_start + micro_batch_size]
                    weight = len(rows) / minibatch_size
                    part = rollout.select(rows.to(rollout.input_ids.device))
                    args = (part.input_ids, part.attention_mask, part.response_start)

                    if settings.entropy_coef:  # an entropy bonus needs its gradient: the full logits
                        logits = roles.policy_logits(*args, temperature=settings.temperature)
                        new_logprobs = logprobs_from_logits(logits, part.responses)
                        entropy = entropy_from_logits(logits, part.mask)
                        del logits
                    else:  # the entropy is a diagnostic: no [B, T, V] logits are kept
                        scores = roles.policy_scores(*args, temperature=settings.temperature)
                        new_logprobs, entropy = scores.log_probs, masked_mean(scores.entropy, part.mask)
                    pg_loss, pg_stats = policy_loss(new_logprobs, part.logprobs, part.advantages, part.mask,
                                                    settings.clip_range)
                    loss = pg_loss - settings.entropy_coef * entropy
                    _check_finite(loss, "policy loss")
                    (loss * weight).backward()

                    new_values = roles.values(*args)
                    vf_loss, vf_stats = value_loss(new_values, part.values, part.returns, part.mask,
                                                   settings.clip_range_value)
                    _check_finite(vf_loss, "value loss")
                    (settings.vf_coef * vf_loss * weight).backward()

                    micro_steps += 1
                    totals["policy_loss"] += pg_loss.item()
                    totals["value_loss"] += vf_loss.item()
                    totals["entropy"] += entropy.item()
                    totals["policy_clip_frac"] += pg_stats["clip_frac"].item()
                    totals["approx_kl"] += pg_stats["approx_kl"].item()
                    totals["ratio_mean"] += pg_stats["ratio_mean"].item()
                    totals["value_clip_frac"] += vf_stats["value_clip_frac"].item()
                if mix:  # once per optimiser step; backward now, while the policy adapter is active
                    sft_loss = demonstration_loss(roles.activate_policy(), demonstrations.next_batch())
                    _check_finite(sft_loss, "SFT loss on the demonstrations")
                    (demonstration_weight * sft_loss).backward()
                    sft_losses.append(sft_loss.item())
                # An infinite max norm measures without clipping.
                norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm or float("inf"))
                _check_finite(norm, "gradient norm")
                grad_norms.append(norm.item())
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                bar.update()
                bar.set_postfix(policy_loss=f"{pg_loss.item():.3f}", value_loss=f"{vf_loss.item():.3f}")
    finally:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
        roles.model.eval()
        roles.activate_policy()
    stats = {key: value / max(micro_steps, 1) for key, value in totals.items()}
    stats["grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
    stats["explained_variance"] = explained_variance(rollout.values, rollout.returns, rollout.mask).item()
    if sft_losses:
        stats["sft_loss"] = sum(sft_losses) / len(sft_losses)
    return stats
