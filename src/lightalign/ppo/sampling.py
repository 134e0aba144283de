"""Sample responses and score their tokens: the two things every on-policy method (PPO, KL evals) needs.

Shapes follow one convention: ``input_ids = cat([prompt_ids, response_ids], 1)`` where prompts are
left-padded to width ``P`` (``response_start``) and responses right-padded to width ``T``; the attention
mask is ``cat([prompt_mask, response_mask], 1)``, never ``input_ids != pad`` (when ``pad == eos``, as in
SmolLM2, that would hide each answer's EOS).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from transformers import GenerationConfig


class GeneratedResponses(NamedTuple):
    """Sampled responses, right-padded.

    Attributes:
        tokens: ``[B, T]`` response token ids; everything after the first EOS is ``pad_token_id``.
        mask: ``[B, T]`` 1 for real tokens up to and including the first EOS, 0 after it.
        ended_with_eos: ``[B]`` bool, False where the response hit ``max_new_tokens`` without an EOS.
    """

    tokens: Tensor
    mask: Tensor
    ended_with_eos: Tensor


def truncate_after_eos(tokens: Tensor, eos_token_id: int | Sequence[int], pad_token_id: int) -> GeneratedResponses:
    """Keep each response up to and including its first stop token; pad and mask out the rest.

    Args:
        tokens: ``[B, T]`` generated ids.
        eos_token_id: one stop id, or several (EOS and the chat template's end-of-turn token).
        pad_token_id: id written after the stop token.

    Example:
        >>> truncate_after_eos(torch.tensor([[5, 2, 7], [5, 6, 7]]), eos_token_id=2, pad_token_id=0)
        GeneratedResponses(tokens=tensor([[5, 2, 0],
                [5, 6, 7]]), mask=tensor([[1, 1, 0],
                [1, 1, 1]]), ended_with_eos=tensor([ True, False]))
    """
    stops = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=tokens.device)
    is_eos = torch.isin(tokens, stops)
    # Number of EOS strictly before each position: 0 means "still inside the answer (or at its EOS)".
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    mask = (eos_before == 0).long()
    tokens = torch.where(mask.bool(), tokens, torch.full_like(tokens, pad_token_id))
    return GeneratedResponses(tokens, mask, is_eos.any(dim=1))


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """Log-probability of each token under ``logits``: ``[B, T, V]``, ``[B, T]`` -> ``[B, T]`` (fp32)."""
    logits = logits.float()
    # gather - logsumexp avoids materialising a second [B, T, V] tensor of log-softmax values.
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, as ``generate`` computes them (pads get position 0)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def response_logits(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, response_start: int, temperature: float = 1.0
) -> Tensor:
    """Logits predicting each response token, divided by ``temperature``: ``[B, P + T]`` -> ``[B, T, V]`` fp32.

    Column ``t`` of the result comes from input column ``response_start + t - 1``, so it scores response
    token ``t``. The model runs with whatever adapter is active.
    """
    steps = input_ids.shape[1] - response_start
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        # Only the columns that predict response tokens: the prompt's logits are never needed.
        logits_to_keep=steps + 1,
        use_cache=False,
    )
    return output.logits[:, :-1].float() / temperature


@torch.no_grad()
def sample_responses(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> GeneratedResponses:
    """Sample one response per left-padded prompt from exactly ``softmax(logits / temperature)``.

    ``generate`` fills every knob it is not given from the checkpoint's ``generation_config`` (top-k 50,
    a repetition penalty, min-p ...), any of which would make the sampled distribution differ from the one
    :func:`response_logits` scores; a clean config is swapped in for the call. ``top_k``/``top_p`` are off
    by default for the same reason (PPO's first ratio is then exactly 1).

    Returns:
        :class:`GeneratedResponses`, truncated after the first stop token.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved_config = base.generation_config
    base.generation_config = GenerationConfig()
    try:
        output = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            do_sample=True,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id if isinstance(eos_token_id, int) else list(eos_token_id),
            pad_token_id=pad_token_id,
            use_cache=True,
        )
    finally:
        base.generation_config = saved_config
    return truncate_after_eos(output[:, prompt_ids.shape[1] :], eos_token_id, pad_token_id)
