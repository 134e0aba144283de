"""Decode answers and score their tokens: the one home of sampling and token log-probs.

Every sampler (eval hooks, PPO rollouts, rankings, ``lightalign rank`` and ``chat``) and every on-policy
score (PPO's log-probs, the KL evals) goes through this module; ``eval/`` and ``ppo/`` both build on it and
it imports neither.

Shapes follow one convention: ``input_ids = cat([prompt_ids, response_ids], 1)`` where prompts are
left-padded to width ``P`` (``response_start``) and responses right-padded to width ``T``; the attention
mask is ``cat([prompt_mask, response_mask], 1)``, never ``input_ids != pad`` (when ``pad == eos``, as in
SmolLM2, that would hide each answer's EOS).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from lightalign.data.collators import pad_prompts
from lightalign.data.tokenize import encode_prompt
from lightalign.data.types import Message
from lightalign.models.modes import eval_mode
from lightalign.progress import progress_bar

# ---- stop tokens and truncation ----------------------------------------------------------------------------------


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS plus the chat template's end-of-turn token when it differs (``<|im_end|>``, ``<|eot_id|>``)."""
    ids = {tokenizer.eos_token_id}
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(marker) if marker in tokenizer.get_vocab() else None
        if token_id is not None:
            ids.add(token_id)
    return sorted(i for i in ids if i is not None)


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


# ---- token log-probs ---------------------------------------------------------------------------------------------


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


# ---- sampling ----------------------------------------------------------------------------------------------------


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


@dataclass
class ScoredSamples:
    """Responses sampled from a policy, with their log-probs under the policy and under its reference.

    ``input_ids``/``attention_mask`` are ``[B, P + T]`` (left-padded prompts, right-padded responses);
    ``logprobs``/``ref_logprobs`` are ``[B, T]``, meaningless at padding (mask with ``responses.mask``), or None
    when not asked for (GRPO without a KL term needs no reference; one pass over fresh samples needs no policy's).
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_start: int
    responses: GeneratedResponses
    logprobs: Tensor | None
    ref_logprobs: Tensor | None


@torch.no_grad()
def sample_and_score(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    *,
    reference: Callable[[], AbstractContextManager] | None,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    forward_batch_size: int = 8,
    score_policy: bool = True,
) -> ScoredSamples:
    """Sample one response per prompt from ``model`` as it is (its active adapter), then score the responses
    under it and under ``reference()``: the on-policy half that PPO's and GRPO's steps and the KL eval share.

    Both log-probs use ``logits / temperature`` at the sampling temperature, so that ``logprobs -
    ref_logprobs`` estimates the KL between the distributions that were sampled from and that PPO penalises.

    Args:
        model: the policy, in eval mode (no dropout), its adapter active.
        prompt_ids, prompt_mask: ``[B, P]`` left-padded prompts.
        reference: a context manager factory under which ``model`` is the reference (e.g.
            ``partial(use_reference, model)``); the policy is scored first, then the reference. None: no
            reference log-probs.
        forward_batch_size: rows per scoring forward pass (memory bound).
        score_policy: False: no policy log-probs (``logprobs`` is None).
    """
    if temperature <= 0:
        raise ValueError(f"scoring samples needs a temperature > 0, got {temperature}")
    responses = sample_responses(model, prompt_ids, prompt_mask, max_new_tokens=max_new_tokens,
                                 eos_token_id=eos_token_id, pad_token_id=pad_token_id, temperature=temperature,
                                 top_k=top_k, top_p=top_p)
    start = prompt_ids.shape[1]
    input_ids = torch.cat([prompt_ids, responses.tokens], dim=1)
    attention_mask = torch.cat([prompt_mask, responses.mask], dim=1)

    def score() -> Tensor:
        chunks = [
            logprobs_from_logits(
                response_logits(model, input_ids[i : i + forward_batch_size],
                                attention_mask[i : i + forward_batch_size], start, temperature),
                responses.tokens[i : i + forward_batch_size],
            )
            for i in range(0, input_ids.shape[0], forward_batch_size)
        ]
        return torch.cat(chunks)

    logprobs = score() if score_policy else None
    ref_logprobs = None
    if reference is not None:
        with reference():
            ref_logprobs = score()
    return ScoredSamples(input_ids, attention_mask, start, responses, logprobs, ref_logprobs)


# ---- answers as text ---------------------------------------------------------------------------------------------


def decode_answers(tokenizer: PreTrainedTokenizerBase, tokens: Tensor, mask: Tensor) -> list[str]:
    """Answer texts without their stop token and special tokens, stripped: what a judge or reward model reads."""
    stops = set(stop_token_ids(tokenizer))
    answers = []
    for row, length in zip(tokens.tolist(), mask.sum(1).tolist(), strict=True):
        ids = row[: int(length)]
        if ids and ids[-1] in stops:
            ids = ids[:-1]
        answers.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return answers


@dataclass
class Answer:
    text: str
    num_tokens: int
    ended_with_eos: bool


@torch.no_grad()
def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[Message]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    desc: str = "generating",
) -> list[Answer]:
    """Answer each prompt (greedy when ``temperature == 0``), in batches of left-padded prompts."""
    stops = stop_token_ids(tokenizer)
    device = next(model.parameters()).device
    answers: list[Answer] = []
    sampling = temperature > 0
    with eval_mode(model), progress_bar(len(prompts), desc, unit="prompt") as bar:
        for start in range(0, len(prompts), batch_size):
            encoded = [encode_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
            batch = {k: v.to(device) for k, v in pad_prompts(encoded, tokenizer.pad_token_id).items()}
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=sampling,
                temperature=temperature if sampling else None,
                top_k=top_k if sampling and top_k else None,
                top_p=top_p if sampling else None,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
            for row in output[:, batch["input_ids"].shape[1] :].tolist():
                cut = next((i for i, t in enumerate(row) if t in stops), None)
                tokens = row if cut is None else row[:cut]
                text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
                answers.append(Answer(text, len(tokens) + (cut is not None), cut is not None))
            bar.update(len(encoded))
    return answers
