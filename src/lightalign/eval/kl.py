"""How far a policy has moved from its reference (the SFT model): KL on answers it samples to held-out prompts.

The one hook interface (``hook(ctx) -> dict[str, float]``); the reference is whatever
:func:`lightalign.models.roles.use_reference` makes of ``ctx.model`` (the frozen ``"ref"`` adapter, or
the base with adapters disabled), so PPO and DPO report the same number.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from lightalign.data.collators import pad_prompts
from lightalign.data.tokenize import encode_prompt
from lightalign.data.types import PromptOnly
from lightalign.eval.hooks import EvalContext, eval_desc
from lightalign.generation import sample_and_score, stop_token_ids
from lightalign.models.modes import eval_mode
from lightalign.models.roles import use_reference
from lightalign.progress import iter_batches


@dataclass
class ReferenceKL:
    """``KL(policy || reference)`` estimated on answers sampled from the policy to fixed prompts.

    For answers ``y ~ π(·|x)`` sampled at ``temperature`` (both models' logits divided by it, as PPO's KL
    penalty does), ``KL = E[log π(y|x) - log π_ref(y|x)]`` summed over the answer's tokens: the same
    unbiased (k1) estimate as PPO's per-update ``kl``, so the two are comparable.

    Metrics: ``kl_to_{reference_name}`` (nats per answer; ``kl_to_sft``, the name the pipeline report reads)
    and ``kl_to_{reference_name}_per_token``. Draws from the global torch RNG: run it inside
    ``torch.random.fork_rng()`` if training continues afterwards.
    """

    prompts: list[PromptOnly]
    reference_name: str = "sft"  # "sft", or "base" for a policy that started from a fresh adapter
    max_new_tokens: int = 64
    batch_size: int = 8
    temperature: float = 1.0
    dense_weights: str = "auto"  # generation.dense_weights (lightalign.generation.dense_decoding)
    name: str = "reference_kl"

    @torch.no_grad()
    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        model, tokenizer = ctx.model, ctx.tokenizer
        device = next(model.parameters()).device
        total_kl, total_tokens, answers = 0.0, 0, 0
        with eval_mode(model):
            for prompts in iter_batches(self.prompts, self.batch_size, eval_desc(ctx, f"KL to {self.reference_name}"),
                                        unit="prompt"):
                encoded = [encode_prompt(tokenizer, p.prompt) for p in prompts]
                batch = {k: v.to(device) for k, v in pad_prompts(encoded, tokenizer.pad_token_id).items()}
                scored = sample_and_score(
                    model,
                    batch["input_ids"],
                    batch["attention_mask"],
                    reference=partial(use_reference, model),
                    max_new_tokens=self.max_new_tokens,
                    eos_token_id=stop_token_ids(tokenizer),
                    pad_token_id=tokenizer.pad_token_id,
                    temperature=self.temperature,
                    forward_batch_size=self.batch_size,
                    dense_weights=self.dense_weights,
                )
                mask = scored.responses.mask
                log_ratio = torch.where(mask.bool(), scored.logprobs - scored.ref_logprobs,
                                        torch.zeros_like(scored.logprobs))
                total_kl += log_ratio.sum().item()
                total_tokens += int(mask.sum())
                answers += len(encoded)
        return {
            f"kl_to_{self.reference_name}": total_kl / max(answers, 1),
            f"kl_to_{self.reference_name}_per_token": total_kl / max(total_tokens, 1),
        }
