"""The optimisation half of a GRPO step: ``num_iterations`` passes of the clipped ratio loss over the answers.

One optimiser step per mini-batch of ``minibatch_size`` answers, accumulated over micro-batches of
``micro_batch_size`` (each micro-batch's loss is normalised by the whole mini-batch's answers or tokens, so the
accumulated gradient is the mini-batch's: :func:`lightalign.grpo.losses.aggregate_tokens`).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from peft import PeftModel
from torch import nn
from tqdm.auto import tqdm

from lightalign.errors import NonFiniteLossError
from lightalign.generation import response_logprobs
from lightalign.grpo.losses import Aggregation, grpo_loss
from lightalign.grpo.rollout import GroupBatch
from lightalign.memory import release_freed_memory
from lightalign.rl.demonstrations import DemonstrationBatches, demonstration_loss
from lightalign.rl.objectives import KLEstimator


def grpo_update(
    model: PeftModel,
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    batch: GroupBatch,
    *,
    clip_range: float,
    beta: float,
    kl_estimator: KLEstimator,
    aggregation: Aggregation,
    max_new_tokens: int,
    temperature: float,
    num_iterations: int = 1,
    minibatch_size: int,
    micro_batch_size: int,
    max_grad_norm: float | None = 1.0,
    demonstrations: DemonstrationBatches | None = None,
    demonstration_weight: float = 0.0,
    progress: bool = True,
) -> dict[str, float]:
    """Optimise the policy (``model`` with its policy adapter active) on ``batch``.

    Mini-batches are drawn by shuffling with the global torch RNG (checkpointed by the recipe, so a resumed
    run shuffles the same way).

    Args:
        model: the policy; the optimiser must hold ``params``, its trainable parameters.
        params: what the gradient norm is clipped over.
        optimizer: e.g. AdamW over ``params``.
        batch: from :func:`lightalign.grpo.rollout.sample_groups`; it must carry ``old_logprobs`` unless there
            is one mini-batch and one iteration, and ``ref_logprobs`` when ``beta > 0``.
        clip_range, beta, kl_estimator, aggregation, max_new_tokens: :func:`~lightalign.grpo.losses.grpo_loss`.
        temperature: the sampling temperature, which the log-probs use too.
        num_iterations: passes over the batch.
        minibatch_size: answers per optimiser step; must divide ``batch.size``.
        micro_batch_size: answers per forward/backward pass.
        max_grad_norm: clip the gradient norm; None: no clipping (still measured).
        demonstrations, demonstration_weight: with both, every optimiser step also adds ``demonstration_weight``
            × the SFT loss of the next batch of demonstrations (:mod:`lightalign.rl.demonstrations`).
        progress: show a progress bar over optimiser steps.

    Returns:
        Means over optimiser steps: ``loss`` (each mini-batch's), ``grad_norm``; over micro-batches:
        ``clip_frac``, ``ratio_mean``, ``kl`` (per token, with ``beta > 0``); with demonstrations ``sft_loss``
        (their SFT loss, before weighting, a mean over optimiser steps).

    Raises:
        NonFiniteLossError: a loss or the gradient norm is NaN/inf (before the optimiser step, so the weights
            are still the last finite ones).
    """
    if batch.size % minibatch_size:
        raise ValueError(f"{batch.size} answers are not a multiple of the mini-batch size {minibatch_size}")
    if batch.old_logprobs is None and (num_iterations > 1 or minibatch_size < batch.size):
        raise ValueError("the policy moves before the last optimisation step: sample with keep_old_logprobs=True")
    totals: dict[str, float] = defaultdict(float)
    micro_steps, grad_norms, losses, sft_losses = 0, [], [], []
    mix = demonstrations is not None and demonstration_weight > 0
    model.train()  # gradient checkpointing only runs in training mode; dropout is off
    bar = tqdm(total=num_iterations * batch.size // minibatch_size, desc="grpo optimisation", unit="step",
               leave=False, disable=not progress)
    try:
        for _ in range(num_iterations):
            order = torch.randperm(batch.size)
            for mb_start in range(0, batch.size, minibatch_size):
                minibatch = order[mb_start : mb_start + minibatch_size].to(batch.input_ids.device)
                # every micro-batch is normalised by the whole mini-batch: the gradients add up to its gradient
                whole = {"num_sequences": minibatch_size, "num_tokens": int(batch.mask[minibatch].sum())}
                minibatch_loss = 0.0
                for micro_start in range(0, minibatch_size, micro_batch_size):
                    # the last pass's freed activations go back to the system: kept, they fragment the heap
                    # and the update grows by half a GB over a step (BENCHMARKS.md §6)
                    release_freed_memory()
                    part = batch.select(minibatch[micro_start : micro_start + micro_batch_size])
                    new_logprobs = response_logprobs(model, part.input_ids, part.attention_mask,
                                                     part.response_start, temperature)
                    old = part.old_logprobs if part.old_logprobs is not None else new_logprobs.detach()
                    loss, stats = grpo_loss(new_logprobs, old, part.advantages, part.mask, clip_range=clip_range,
                                            beta=beta, ref_logprobs=part.ref_logprobs, kl_estimator=kl_estimator,
                                            aggregation=aggregation, max_new_tokens=max_new_tokens, **whole)
                    if not torch.isfinite(loss):
                        raise NonFiniteLossError(f"the GRPO loss became {loss.item()}")
                    loss.backward()
                    micro_steps += 1
                    minibatch_loss += loss.item()
                    for key, value in stats.items():
                        totals[key] += value.item()
                if mix:
                    sft_loss = demonstration_loss(model, demonstrations.next_batch())
                    if not torch.isfinite(sft_loss):
                        raise NonFiniteLossError(f"the SFT loss on the demonstrations became {sft_loss.item()}")
                    (demonstration_weight * sft_loss).backward()
                    sft_losses.append(sft_loss.item())
                    minibatch_loss += demonstration_weight * sft_loss.item()
                # An infinite max norm measures without clipping.
                norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm or float("inf"))
                if not torch.isfinite(norm):
                    raise NonFiniteLossError(f"the gradient norm became {norm.item()}")
                grad_norms.append(norm.item())
                losses.append(minibatch_loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                bar.update()
    finally:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
        model.eval()
    result = {key: value / max(micro_steps, 1) for key, value in totals.items()}
    result["loss"] = sum(losses) / max(len(losses), 1)
    result["grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
    if sft_losses:
        result["sft_loss"] = sum(sft_losses) / len(sft_losses)
    return result
