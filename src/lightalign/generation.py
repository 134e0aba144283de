"""Decode answers and score their tokens: the one home of sampling and of response log-probs.

Every sampler (eval hooks, PPO rollouts, rankings, ``lightalign rank`` and ``chat``) and every on-policy
score (PPO's and GRPO's log-probs, the KL evals) goes through this module; ``eval/`` and ``ppo/`` both build on
it and it imports neither. The log-probs themselves, from hidden states or full logits, are
:mod:`lightalign.models.logprobs`'.

Shapes follow one convention: ``input_ids = cat([prompt_ids, response_ids], 1)`` where prompts are
left-padded to width ``P`` (``response_start``) and responses right-padded to width ``T``; the attention
mask is ``cat([prompt_mask, response_mask], 1)``, never ``input_ids != pad`` (when ``pad == eos``, as in
SmolLM2, that would hide each answer's EOS).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from lightalign.config.schema import DENSE_WEIGHTS
from lightalign.data.collators import pad_prompts
from lightalign.data.tokenize import encode_prompt
from lightalign.data.types import Message
from lightalign.memory import release_freed_memory
from lightalign.models.logprobs import (
    LabelLogprobs,
    causal_lm_of,
    label_logprobs,
    label_logprobs_from_logits,
    output_weight,
)
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


def last_hidden_states(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The transformer body's last hidden states ``[B, L, H]`` (after its final norm, no output layer) under
    the active adapter, positions from the mask as ``generate`` computes them (left padding skipped)."""
    causal_lm = causal_lm_of(model)
    output = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,  # model.model for Llama
                                     position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return output.last_hidden_state


def response_token_scores(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, response_start: int, temperature: float = 1.0
) -> LabelLogprobs:
    """Log-probability (and entropy, ...) of each response token under ``logits / temperature``, each ``[B, T]``.

    The same numbers as :func:`logprobs_from_logits` over :func:`response_logits`, without their ``[B, T, V]``
    fp32 logits (and the as-large log-softmax autograd keeps): the body's hidden states at the response
    positions go through the output layer a chunk of tokens at a time
    (:func:`~lightalign.models.logprobs.label_logprobs`). For GRPO's update on the demo (32 answers x 24
    tokens, 49 k vocabulary) those logits are 150 MB a copy. Models whose output layer is not a plain matrix
    (:func:`~lightalign.models.logprobs.output_weight`) take the full logits. Values at padding positions are
    meaningless: mask them.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    causal_lm = causal_lm_of(model)
    weight = output_weight(causal_lm)
    tokens = input_ids[:, response_start:]
    if weight is None:
        return label_logprobs_from_logits(
            response_logits(model, input_ids, attention_mask, response_start, temperature), tokens)
    hidden = last_hidden_states(model, input_ids, attention_mask)[:, response_start - 1 : -1]
    return _token_scores_from_hidden(hidden, weight, tokens, temperature)


def _token_scores_from_hidden(hidden: Tensor, weight: Tensor, tokens: Tensor, temperature: float) -> LabelLogprobs:
    """Scores of ``tokens`` ``[B, T]`` from the hidden states that predict them ``[B, T, H]``, through the output
    layer ``weight`` a chunk at a time (:func:`~lightalign.models.logprobs.label_logprobs`), at ``temperature``."""
    # (h / τ) W^T = (h W^T) / τ: the temperature scales the hidden states instead of the logits
    scored = label_logprobs((hidden / temperature).reshape(-1, hidden.shape[-1]), weight.to(hidden.device),
                            tokens.reshape(-1))
    return LabelLogprobs(*(values.view(tokens.shape) for values in scored))


def response_logprobs(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, response_start: int, temperature: float = 1.0
) -> Tensor:
    """``[B, T]`` log-probability of each response token at ``temperature`` (:func:`response_token_scores`)."""
    return response_token_scores(model, input_ids, attention_mask, response_start, temperature).log_probs


# ---- dense weights for decoding ----------------------------------------------------------------------------------

# generation.dense_weights=auto uses a dense copy only if it takes at most this share of the memory available
# when sampling starts (the rest is for activations, the KV cache, and whatever else runs beside).
DENSE_MEMORY_SHARE = 0.5


class DenseLinear(nn.Linear):
    """A ``bitsandbytes`` 4-bit linear layer dequantised once, computing as bitsandbytes does on a CPU.

    bitsandbytes' CPU path (the differentiable one :func:`~lightalign.models.loading.keep_4bit_layers_differentiable`
    keeps) dequantises the weight into the compute dtype at every call, then runs ``F.linear(x.to(compute),
    weight, bias).to(x.dtype)``; this layer holds that dequantised weight, so its outputs are bit for bit the same.
    """

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)


def _four_bit_layers(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """``(parent, attribute, layer)`` of every 4-bit linear layer a dense copy can stand in for.

    Under PEFT the parent is the LoRA layer (attribute ``base_layer``): swapping only the base layer keeps PEFT's
    own forward, so the active adapter, several active adapters, adapters disabled and LoRA dropout all behave as
    they do on the 4-bit model.
    """
    if not any(type(p).__name__ == "Params4bit" for p in model.parameters()):
        return []  # not a 4-bit model (bitsandbytes is then not even imported)
    import bitsandbytes as bnb

    layers = []
    for parent in model.modules():
        for name, child in parent.named_children():
            # A layer bitsandbytes repacked for its inference kernel has another layout; it keeps computing in 4 bit.
            if isinstance(child, bnb.nn.Linear4bit) and not getattr(child.weight.quant_state,
                                                                      "packing_format_for_cpu", False):
                layers.append((parent, name, child))
    return layers


def _dense_copy(layer: nn.Module) -> DenseLinear:
    import bitsandbytes as bnb

    weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    dtype = layer.compute_dtype or weight.dtype
    dense = DenseLinear(weight.shape[1], weight.shape[0], bias=layer.bias is not None, device="meta")
    dense.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    if layer.bias is not None:
        dense.bias = nn.Parameter(layer.bias.detach().to(dtype), requires_grad=False)
    return dense


def available_memory_bytes() -> int:
    """Memory the system can give this process now without swapping (psutil comes with accelerate)."""
    import psutil

    return int(psutil.virtual_memory().available)


def dense_weights_bytes(model: nn.Module) -> int:
    """Bytes a dense copy of ``model``'s 4-bit layers takes (in their compute dtype); 0 without 4-bit layers."""
    return _dense_bytes(_four_bit_layers(model))


def _dense_bytes(layers: list[tuple[nn.Module, str, nn.Module]]) -> int:
    total = 0
    for _, _, layer in layers:
        dtype = layer.compute_dtype or layer.weight.quant_state.dtype
        total += layer.in_features * layer.out_features * torch.finfo(dtype).bits // 8
    return total


def uses_dense_weights(model: nn.Module, mode: str = "auto") -> bool:
    """Whether :func:`dense_decoding` gives ``model`` a dense copy under ``mode`` (``generation.dense_weights``).

    ``on``: whenever the model has 4-bit layers. ``auto``: on a CPU, when the copy takes at most
    ``DENSE_MEMORY_SHARE`` of the memory available now; never on a GPU, where bitsandbytes' 4-bit kernels
    decode without dequantising the whole layer and the copy would cost the memory QLoRA exists to save.
    """
    return bool(_layers_to_densify(model, mode))


def _layers_to_densify(model: nn.Module, mode: str) -> list[tuple[nn.Module, str, nn.Module]]:
    """:func:`uses_dense_weights`' decision, as the layers to swap (none: decode in 4 bit); one walk of the model."""
    if mode not in DENSE_WEIGHTS:
        raise ValueError(f"dense_weights={mode!r} is not one of {', '.join(DENSE_WEIGHTS)}")
    layers = _four_bit_layers(model) if mode != "off" else []
    if not layers or mode == "on":
        return layers
    if layers[0][2].weight.device.type != "cpu":
        return []
    return layers if _dense_bytes(layers) <= DENSE_MEMORY_SHARE * available_memory_bytes() else []


@contextmanager
def dense_decoding(model: nn.Module, mode: str = "auto") -> Iterator[bool]:
    """Inside the block ``model``'s 4-bit layers are dense copies (dequantised once); after it, the model is as found.

    bitsandbytes dequantises every 4-bit weight at every call: on a CPU that is most of a decoding step
    (about 0.2 s a step for 135 M parameters on 2 cores, whatever the batch). One sampling call wrapped in this
    block dequantises each weight once, decodes with the dense copies, and frees them at the end. The
    copies compute exactly as bitsandbytes does (:class:`DenseLinear`), and only the base layers are replaced
    (PEFT's LoRA layers stay), so the logits, greedy answers and, at one seed, sampled answers are the same
    as without the block. Nothing trainable is touched: gradients and training work as before afterwards.

    Yields:
        Whether dense copies are in use (:func:`uses_dense_weights`).
    """
    layers = _layers_to_densify(model, mode)
    if not layers:
        yield False
        return
    release_freed_memory()  # what the last update freed is not kept on top of the copies
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        copies: dict[int, DenseLinear] = {}  # a layer shared by two parents gets one copy
        with torch.no_grad():
            for parent, name, layer in layers:
                if id(layer) not in copies:
                    copies[id(layer)] = _dense_copy(layer)
                setattr(parent, name, copies[id(layer)])
                swapped.append((parent, name, layer))
        del copies
        yield True
    finally:
        for parent, name, layer in reversed(swapped):
            setattr(parent, name, layer)
        if swapped:
            release_freed_memory()  # the dense copies are gone: give their pages back rather than keep the peak


# ---- sampling ----------------------------------------------------------------------------------------------------


# The field of a model's output (and the keyword of ``generate``) that holds the KV cache: transformers 5 renamed
# ``past_key_values`` to ``cache`` (the old name still works there, with a deprecation warning).
_CACHE_FIELD = "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


def _prompt_cache(module: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, num_samples: int,
                  **forward_kwargs: Any) -> Any:
    """The KV cache of each left-padded prompt but its last token, computed once by ``module`` (the model, or its
    body), each row copied ``num_samples`` times (rows ``i·n .. i·n + n - 1``): ``generate`` given it and the
    repeated prompts runs only their last token; :func:`shared_prompt_logprobs` runs the answers after it.

    The K answers to one prompt share its prompt; computing it once instead of K times is what makes sampling
    several answers per prompt cheaper (GRPO's groups, the rankings stage's K, pass@k): the demo's chat prompts are
    ~38 tokens against answers of at most 24. The prompt's keys and values come from a batch of another shape, so
    their last bits may differ from those of the repeated batch; see :func:`sample_responses`.
    """
    output = module(input_ids=prompt_ids[:, :-1], attention_mask=prompt_mask[:, :-1],
                    position_ids=position_ids_from_mask(prompt_mask[:, :-1]), use_cache=True, **forward_kwargs)
    cache = getattr(output, _CACHE_FIELD)
    cache.batch_repeat_interleave(num_samples)
    return cache


@torch.no_grad()
def generate_tokens(
    model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, *, num_samples: int = 1, **generate_kwargs: Any
) -> Tensor:
    """``model.generate`` on left-padded prompts, ``num_samples`` answers to each (rows ``i·n .. i·n + n - 1``);
    returns the answer tokens only (``[B·n, T]``, untruncated).

    With ``num_samples > 1`` each prompt is run once (:func:`_prompt_cache`), not once per answer. Call it inside
    :func:`dense_decoding` so that the prompt runs on the same weights as the decoding.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if num_samples > 1 and prompt_ids.shape[1] > 1:
        # only the last position's logits: the prompt's others are never needed
        generate_kwargs[_CACHE_FIELD] = _prompt_cache(model, prompt_ids, prompt_mask, num_samples, logits_to_keep=1)
    if num_samples > 1:
        prompt_ids = prompt_ids.repeat_interleave(num_samples, dim=0)
        prompt_mask = prompt_mask.repeat_interleave(num_samples, dim=0)
    stopping = StoppingCriteriaList([*generate_kwargs.pop("stopping_criteria", []), _ReleaseFreedMemory()])
    output = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, stopping_criteria=stopping,
                            **generate_kwargs)
    return output[:, prompt_ids.shape[1] :]


class _ReleaseFreedMemory(StoppingCriteria):
    """Stops nothing: after every decoding step it hands the freed heap back (:func:`release_freed_memory`).

    The KV cache grows by one token a step and each step frees the last step's copy, which glibc keeps in its
    heap: one cache's worth more a step until something trims. Trimming every step took GRPO's sampling peak on
    the benchmark from 1290 to 1254 MB at no measurable cost (a few ms a step; BENCHMARKS.md §6).
    """

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
        release_freed_memory()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class InverseCdfSampler(LogitsProcessor):
    """Draws each row's next token from ``softmax(scores)`` and leaves it the row's only finite score, so that
    greedy decoding picks it: sampling as the last logits processor.

    transformers samples with ``torch.multinomial``, whose CPU kernel draws an exponential variate for every
    entry of every row: 43 ms a decoding step for 32 rows of SmolLM2's 49,152 tokens, 15% of GRPO's decoding on
    2 CPU cores (BENCHMARKS.md §6). One uniform draw per row against the cumulative probabilities samples the
    same distribution (a token of probability 0 is never drawn) from the same random generator.
    """

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        cumulative = torch.softmax(scores.float(), dim=-1).cumsum(dim=-1)
        totals = cumulative[:, -1:]
        if not torch.isfinite(totals).all():
            raise ValueError("sampling: the next-token probabilities contain inf or nan")
        draws = torch.rand(totals.shape, device=scores.device, dtype=cumulative.dtype) * totals
        tokens = torch.searchsorted(cumulative, draws, right=True).clamp_(max=scores.shape[-1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens, 0.0)


def sampling_processors(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> LogitsProcessorList:
    """The logits processors that sample from ``softmax(logits / temperature)`` (cut to the ``top_k`` most likely
    tokens and the ``top_p`` nucleus, in transformers' order) under greedy decoding (:class:`InverseCdfSampler`)."""
    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        processors.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    processors.append(InverseCdfSampler())
    return processors


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
    dense_weights: str = "auto",
    num_samples: int = 1,
) -> GeneratedResponses:
    """Sample ``num_samples`` responses per left-padded prompt (rows ``i·n .. i·n + n - 1`` answer prompt ``i``)
    from exactly ``softmax(logits / temperature)``.

    ``generate`` fills every knob it is not given from the checkpoint's ``generation_config`` (top-k 50,
    a repetition penalty, min-p ...), any of which would make the sampled distribution differ from the one
    :func:`response_logits` scores; a clean config is swapped in for the call. ``top_k``/``top_p`` are off
    by default for the same reason (PPO's first ratio is then exactly 1). ``dense_weights``: see
    :func:`dense_decoding` (the same samples either way). With ``num_samples > 1`` each prompt runs once
    (:func:`generate_tokens`): the same distribution as repeating the prompt ``num_samples`` times, and at one
    seed the same answers unless a logit's last bits (the prompt computed in another batch shape) tip a draw.

    Returns:
        :class:`GeneratedResponses`, truncated after the first stop token.
    """
    base = causal_lm_of(model)
    saved_config = base.generation_config
    base.generation_config = GenerationConfig()
    try:
        with dense_decoding(model, dense_weights):
            tokens = generate_tokens(
                model,
                prompt_ids,
                prompt_mask,
                num_samples=num_samples,
                do_sample=False,  # the processors sample (InverseCdfSampler): greedy decoding takes their draw
                logits_processor=sampling_processors(temperature, top_k, top_p),
                max_new_tokens=max_new_tokens,
                eos_token_id=eos_token_id if isinstance(eos_token_id, int) else list(eos_token_id),
                pad_token_id=pad_token_id,
                use_cache=True,
            )
    finally:
        base.generation_config = saved_config
    return truncate_after_eos(tokens, eos_token_id, pad_token_id)


def shared_prompt_logprobs(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    responses: GeneratedResponses,
    num_samples: int,
    temperature: float = 1.0,
) -> Tensor:
    """``[B·n, T]`` log-probs of ``num_samples`` responses to each prompt (rows ``i·n .. i·n + n - 1``), each prompt
    run once: :func:`response_logprobs` over the repeated prompts, with the prompts' keys and values computed
    once and copied (:func:`_prompt_cache`), so the model runs only the responses ``n`` times.

    The same numbers up to the last bits (another batch shape for the prompts; ~1e-6 in fp32), without gradients.
    A model whose output layer is not a plain matrix, or a one-token prompt, is scored over the repeated prompts.
    """
    causal_lm = causal_lm_of(model)
    weight = output_weight(causal_lm)
    ids = prompt_ids.repeat_interleave(num_samples, dim=0)
    mask = torch.cat([prompt_mask.repeat_interleave(num_samples, dim=0), responses.mask], dim=1)
    if weight is None or prompt_ids.shape[1] < 2:
        return response_logprobs(model, torch.cat([ids, responses.tokens], 1), mask, ids.shape[1], temperature)
    decoder = causal_lm.get_decoder()
    with torch.no_grad():
        cache = _prompt_cache(decoder, prompt_ids, prompt_mask, num_samples)
        # the prompt's last token and every response token but the last: each predicts the response token after it
        rest = torch.cat([ids[:, -1:], responses.tokens[:, :-1]], dim=1)
        start = ids.shape[1] - 1
        hidden = decoder(input_ids=rest, attention_mask=mask[:, :-1], use_cache=True,
                         position_ids=position_ids_from_mask(mask)[:, start:-1],
                         **{_CACHE_FIELD: cache}).last_hidden_state
        return _token_scores_from_hidden(hidden, weight, responses.tokens, temperature).log_probs


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
    dense_weights: str = "auto",
    num_samples: int = 1,
) -> ScoredSamples:
    """Sample ``num_samples`` responses per prompt from ``model`` as it is (its active adapter), then score the
    responses under it and under ``reference()``: the on-policy half that PPO's and GRPO's steps and the KL eval
    share. Row ``i·n + j`` of the result is answer ``j`` to prompt ``i`` (:func:`sample_responses`); with
    ``n > 1`` each prompt also runs once for scoring its answers (:func:`shared_prompt_logprobs`), so the log-probs
    equal a training forward's only up to the last bits (PPO, one answer a prompt, gets exactly the same).

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
        dense_weights: whether sampling and scoring run on a dense copy of the 4-bit layers (:func:`dense_decoding`,
            one copy for both). It computes bit for bit as the 4-bit layers do, so the log-probs still equal the
            training forward's and PPO's first ratio is exactly 1; scoring on the 4-bit layers, which dequantise
            at every call, took a third of a GRPO step's sampling on 2 CPU cores (BENCHMARKS.md §6).
    """
    if temperature <= 0:
        raise ValueError(f"scoring samples needs a temperature > 0, got {temperature}")
    with dense_decoding(model, dense_weights):  # the inner call makes no second copy
        responses = sample_responses(model, prompt_ids, prompt_mask, max_new_tokens=max_new_tokens,
                                     eos_token_id=eos_token_id, pad_token_id=pad_token_id, temperature=temperature,
                                     top_k=top_k, top_p=top_p, dense_weights="off", num_samples=num_samples)
        n = num_samples
        start = prompt_ids.shape[1]
        input_ids = torch.cat([prompt_ids.repeat_interleave(n, dim=0), responses.tokens], dim=1)
        attention_mask = torch.cat([prompt_mask.repeat_interleave(n, dim=0), responses.mask], dim=1)

        def score() -> Tensor:
            scores = []
            if n > 1:  # whole prompts a pass, each run once for its n answers
                per_pass = max(1, forward_batch_size // n)
                for i in range(0, prompt_ids.shape[0], per_pass):
                    # each pass starts from what is live (the first: not on the decoding's KV cache): glibc kept
                    # ~70 MB of the last pass's activations, and over a step's passes the scoring peak rose above
                    # the decoding's (6 ms a call; BENCHMARKS.md §6)
                    release_freed_memory()
                    scores.append(shared_prompt_logprobs(
                        model, prompt_ids[i : i + per_pass], prompt_mask[i : i + per_pass],
                        GeneratedResponses(*(t[i * n : (i + per_pass) * n] for t in responses)), n, temperature))
            else:
                for i in range(0, input_ids.shape[0], forward_batch_size):
                    release_freed_memory()  # as above
                    scores.append(response_logprobs(model, input_ids[i : i + forward_batch_size],
                                                    attention_mask[i : i + forward_batch_size], start, temperature))
            return torch.cat(scores)

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
    dense_weights: str = "auto",
    num_samples: int = 1,
) -> list[Answer]:
    """Answer each prompt (greedy when ``temperature == 0``), in batches of left-padded prompts.

    ``dense_weights``: see :func:`dense_decoding`; one dense copy serves every batch of the call.
    ``num_samples``: sampled answers per prompt (``temperature > 0``), each prompt run once for all of them
    (:func:`generate_tokens`); answers ``i·n .. i·n + n - 1`` are prompt ``i``'s. ``batch_size`` counts answers.
    """
    if num_samples > 1 and temperature <= 0:
        raise ValueError(f"{num_samples} answers per prompt need sampling (temperature > 0), got {temperature}")
    stops = stop_token_ids(tokenizer)
    device = next(model.parameters()).device
    answers: list[Answer] = []
    sampling = temperature > 0
    per_call = max(1, batch_size // num_samples)
    with (eval_mode(model), dense_decoding(model, dense_weights),
          progress_bar(len(prompts) * num_samples, desc, unit="answer" if num_samples > 1 else "prompt") as bar):
        for start in range(0, len(prompts), per_call):
            encoded = [encode_prompt(tokenizer, p) for p in prompts[start : start + per_call]]
            batch = {k: v.to(device) for k, v in pad_prompts(encoded, tokenizer.pad_token_id).items()}
            output = generate_tokens(
                model,
                batch["input_ids"],
                batch["attention_mask"],
                num_samples=num_samples,
                max_new_tokens=max_new_tokens,
                do_sample=sampling,
                temperature=temperature if sampling else None,
                top_k=top_k if sampling and top_k else None,
                top_p=top_p if sampling else None,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
            for row in output.tolist():
                cut = next((i for i, t in enumerate(row) if t in stops), None)
                tokens = row if cut is None else row[:cut]
                text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
                answers.append(Answer(text, len(tokens) + (cut is not None), cut is not None))
            bar.update(len(encoded) * num_samples)
    return answers
