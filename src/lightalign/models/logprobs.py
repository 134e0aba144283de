"""Log-probabilities of label tokens from a causal LM's hidden states, without full-vocabulary logits.

One home for "how likely is each label token": the SFT loss, DPO's policy and reference log-probs (both through
TRL's fused LM head, :func:`install_chunked_lm_head`) and the held-out evaluations
(:func:`causal_lm_label_logprobs`) all compute it here.

Why chunked: a batch of 8 x 256 tokens over SmolLM2's 49 152-token vocabulary has 100 M logits, 400 MB in fp32,
and autograd keeps the log-softmax (as much again) for the backward pass. :func:`label_logprobs` projects the
hidden states through the output layer a few hundred tokens at a time, only at positions that have a label (an
SFT batch trains on the answers: about a fifth of its tokens on the demo data), and already computes the
gradient of each log-probability with respect to its hidden state in the forward pass (it depends on nothing
else), so the backward pass is one multiplication and nothing of the logits is kept.

TRL 1.16's trainers have their own chunked head (``trl.trainer.utils.add_fused_lm_head``), a Triton kernel on
GPUs; without Triton it falls back to torch operations on 4096-token x 32 768-column fp32 tiles with several
tile-sized temporaries, and scores every position, labelled or not. ``trainer.chunked_logprobs=auto`` uses ours
where TRL's would run that fallback (no CUDA), TRL's kernel on a GPU.
"""

from __future__ import annotations

import functools
import types
from typing import NamedTuple

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig

from lightalign.config.schema import CHUNKED_LOGPROBS_MODES
from lightalign.data.tokenize import IGNORE_INDEX

CHUNK_BYTES = 32 * 2**20  # one fp32 logits tile of at most this size (about 170 tokens of a 49 k vocabulary)
_INSTALLED = "_lightalign_chunked_lm_head"
# TRL's fused head scales or caps the logits for these configs; ours computes plain logits, so it leaves them to TRL
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")


class LabelLogprobs(NamedTuple):
    """Per-token results of :func:`label_logprobs`, each ``[N]``.

    Attributes:
        log_probs: ``log p(label)`` (fp32, or fp64 for fp64 inputs; differentiable).
        entropy: entropy of the next-token distribution (same dtype, no gradient).
        is_top1: whether the label is the most likely token (the first of equal maxima, as ``argmax``).
        mean_logits: mean logit over the vocabulary (same dtype, no gradient).
    """

    log_probs: Tensor
    entropy: Tensor
    is_top1: Tensor
    mean_logits: Tensor


def chunk_tokens_for(vocab_size: int, chunk_bytes: int | None = None) -> int:
    """Tokens per chunk so that one fp32 ``[tokens, vocab]`` tile stays within ``chunk_bytes`` (default
    :data:`CHUNK_BYTES`), at least 16."""
    return max(16, (chunk_bytes or CHUNK_BYTES) // (4 * vocab_size))


class _LabelLogprobsFunction(torch.autograd.Function):
    """``log_softmax(hidden @ weight.T)[label]`` chunk by chunk; the backward needs nothing of the logits.

    ``d log p(y_i) / d h_i = W^T (onehot(y_i) - p_i)`` depends on token ``i`` alone, so the forward pass computes
    it per chunk (``jacobian``, ``[N, H]``: the size of the hidden states) and the backward pass scales its rows by
    the incoming gradient. When the output layer itself is trained, its gradient needs the incoming gradient, so
    the backward recomputes each chunk's probabilities for it.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, labels: Tensor, chunk_tokens: int):  # noqa: ANN001, ANN205
        ctx.set_materialize_grads(False)
        hidden_grad, weight_grad = ctx.needs_input_grad[:2]
        n = hidden.shape[0]
        exact = torch.promote_types(hidden.dtype, torch.float32)  # the softmax's dtype: fp32, or fp64 if given
        log_probs = torch.empty(n, dtype=exact, device=hidden.device)
        entropy, mean_logits = torch.empty_like(log_probs), torch.empty_like(log_probs)
        is_top1 = torch.empty(n, dtype=torch.bool, device=hidden.device)
        jacobian = torch.empty_like(hidden) if hidden_grad else None
        for start in range(0, n, chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            target = labels[rows].unsqueeze(1)
            # the projection in the inputs' dtype (bf16 under mixed precision), the softmax in fp32, in place:
            # at most two tiles of [chunk, vocab] exist at a time
            shifted = (hidden[rows] @ weight.t()).to(exact)
            peak, top = shifted.max(dim=1)
            is_top1[rows] = top == target.squeeze(1)
            shifted.sub_(peak.unsqueeze(1))
            mean_logits[rows] = shifted.mean(dim=1) + peak
            target_shifted = shifted.gather(1, target).squeeze(1)
            probs = shifted.exp()
            total = probs.sum(dim=1)
            log_total = total.log()
            log_probs[rows] = target_shifted - log_total
            # H = log Σe^s - Σ e^s·s / Σ e^s, with s the logits less their maximum
            expected = torch.bmm(probs.unsqueeze(1), shifted.unsqueeze(2)).view(-1)
            entropy[rows] = log_total - expected / total
            del shifted
            if jacobian is not None:
                probs.div_(total.unsqueeze(1))
                probs.scatter_add_(1, target, torch.full_like(target, -1, dtype=probs.dtype))  # p - onehot
                jacobian[rows] = (probs.to(weight.dtype) @ weight).neg_()
        ctx.save_for_backward(jacobian, hidden if weight_grad else None, weight if weight_grad else None, labels)
        ctx.chunk_tokens = chunk_tokens
        ctx.mark_non_differentiable(entropy, is_top1, mean_logits)
        return log_probs, entropy, is_top1, mean_logits

    @staticmethod
    def backward(ctx, grad_log_probs: Tensor | None, *_):  # noqa: ANN001, ANN205
        jacobian, hidden, weight, labels = ctx.saved_tensors
        if grad_log_probs is None:
            return None, None, None, None
        grad_hidden = jacobian * grad_log_probs.unsqueeze(1).to(jacobian.dtype) if jacobian is not None else None
        grad_weight = None
        if weight is not None:
            exact = grad_log_probs.dtype
            grad_weight = torch.zeros_like(weight, dtype=exact)
            for start in range(0, hidden.shape[0], ctx.chunk_tokens):
                rows = slice(start, start + ctx.chunk_tokens)
                probs = torch.softmax((hidden[rows] @ weight.t()).to(exact), dim=1)
                probs.scatter_add_(1, labels[rows].unsqueeze(1), torch.full_like(probs[:, :1], -1.0))  # p - onehot
                probs.mul_(-grad_log_probs[rows].unsqueeze(1))
                grad_weight.addmm_(probs.t(), hidden[rows].to(exact))
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def label_logprobs(hidden: Tensor, weight: Tensor, labels: Tensor, *, chunk_tokens: int | None = None) -> LabelLogprobs:
    """Log-probability of each label under ``softmax(hidden @ weight.T)``, a chunk of tokens at a time.

    Args:
        hidden: ``[N, H]`` final hidden states (after the model's last norm), one row per scored token.
        weight: ``[V, H]`` the output layer's weight (tied embeddings: the embedding matrix); no bias.
        labels: ``[N]`` the token each row should predict (no ``-100``: select the labelled rows first).
        chunk_tokens: rows per chunk; default :func:`chunk_tokens_for` the vocabulary size.

    Returns:
        :class:`LabelLogprobs`; ``log_probs`` carries gradients to ``hidden`` (and ``weight``, if it is trained).
        Equals ``log_softmax(hidden @ weight.T)`` gathered at the labels, to fp32 rounding.

    Example:
        >>> hidden, weight = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 0.0]])
        >>> round(label_logprobs(hidden, weight, torch.tensor([0])).log_probs.item(), 4)  # log(e²/(e²+1))
        -0.1269
    """
    chunk = chunk_tokens or chunk_tokens_for(weight.shape[0])
    return LabelLogprobs(*_LabelLogprobsFunction.apply(hidden, weight, labels, chunk))


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """Log-probability of each token under full logits: ``[..., V]``, ``[...]`` -> ``[...]`` (fp32)."""
    logits = logits.float()
    # gather - logsumexp avoids materialising a second [..., V] tensor of log-softmax values.
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def label_logprobs_from_logits(logits: Tensor, labels: Tensor) -> LabelLogprobs:
    """:class:`LabelLogprobs` from full logits ``[..., V]`` and labels ``[...]`` (no ``-100``): the reference
    :func:`label_logprobs` equals, and the fallback where :func:`output_weight` is None."""
    log_probs = logprobs_from_logits(logits, labels)
    with torch.no_grad():
        logits = logits.float()
        probs = torch.softmax(logits, dim=-1)
        entropy = torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)
        return LabelLogprobs(log_probs, entropy, logits.argmax(-1) == labels, logits.mean(-1))


def output_weight(model: nn.Module) -> Tensor | None:
    """The output layer's weight, when :func:`label_logprobs` computes exactly the model's logits (else None).

    None when the output layer has a bias or is not a plain floating-point matrix (e.g. quantised), or the
    config scales or caps the logits (Gemma 2's soft-capping, Cohere's logit scale, ...).
    """
    head = model.get_output_embeddings()
    if hasattr(head, "base_layer"):  # an adapter on the output layer (PEFT's lm_head LoRA): its logits are not W·h
        return None
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    weight = getattr(head, "weight", None)
    if (weight is None or getattr(head, "bias", None) is not None or not isinstance(weight, nn.Parameter)
            or not weight.dtype.is_floating_point or weight.dim() != 2):
        return None
    if transforms_logits(config):
        return None
    return weight


def transforms_logits(config: PretrainedConfig) -> bool:
    """Whether a model's config scales or caps its logits (Gemma 2's soft-capping, Cohere's logit scale, ...), so
    that they are not the output layer's product with the last hidden states."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return any(getattr(config, name, None) not in (None, 1.0) for name in _LOGIT_TRANSFORMS)


def logits_from_hidden_states(config: PretrainedConfig, *, trust_remote_code: bool = False) -> bool:
    """Whether the causal LM of ``config`` computes its logits as :func:`output_weight` reads them (a plain
    output matrix, no bias, no logit scaling or capping): known from the config alone, before anything loads.

    Builds the model's skeleton on the meta device (no memory, no weights) to look at its output layer: a head
    with a bias (Phi, GPT-J) is in the architecture, not in the config; the config's logit scaling or capping is
    :func:`output_weight`'s check too.
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return output_weight(skeleton) is not None


def causal_lm_of(model: nn.Module) -> nn.Module:
    """The causal LM itself: ``model``, or the one a PEFT model wraps."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def hidden_label_logprobs(causal_lm: nn.Module, hidden: Tensor, labels: Tensor) -> tuple[LabelLogprobs, Tensor]:
    """``[B, T', H]`` hidden states and their ``[B, T']`` next-token labels -> per-position results and the mask,
    through the output layer (the caller checks that :func:`output_weight` is not None)."""
    weight = output_weight(causal_lm)
    hidden, labels = hidden.to(weight.device), labels.to(weight.device)
    mask = labels != IGNORE_INDEX
    scored = label_logprobs(hidden[mask], weight, labels[mask])

    def spread(values: Tensor) -> Tensor:
        # masked_scatter keeps log_probs connected to the graph even when no position has a label
        return values.new_zeros(mask.shape).masked_scatter(mask, values)

    return LabelLogprobs(*(spread(values) for values in scored)), mask


def causal_lm_label_logprobs(model: nn.Module, input_ids: Tensor, labels: Tensor, **model_inputs: Tensor) -> Tensor:
    """``[B, T-1]`` log-probability of each next-token label (``labels[:, 1:]``), 0 where the label is ``-100``.

    ``model`` is a causal LM or a PEFT model around one (its active adapter applies); ``model_inputs`` are
    ``attention_mask``/``position_ids``. The model's own forward runs, asked for the logits of one position and
    the last hidden state only; the output layer then sees the labelled positions (:func:`label_logprobs`).
    Falls back to the model's full logits where :func:`output_weight` is None.
    """
    causal_lm = causal_lm_of(model)
    if output_weight(causal_lm) is None:
        logits = model(input_ids=input_ids, use_cache=False, **model_inputs).logits[:, :-1]
        target = labels[:, 1:]
        return logprobs_from_logits(logits, target.clamp(min=0)) * (target != IGNORE_INDEX)
    output = model(input_ids=input_ids, use_cache=False, logits_to_keep=1, output_hidden_states=[-1], **model_inputs)
    return hidden_label_logprobs(causal_lm, output.hidden_states[-1][:, :-1], labels[:, 1:])[0].log_probs


def use_chunked_logprobs(mode: str) -> bool:
    """Resolve ``trainer.chunked_logprobs`` (``auto|on|off``): ``auto`` is on without CUDA (module docstring)."""
    if mode not in CHUNKED_LOGPROBS_MODES:
        raise ValueError(f"chunked_logprobs must be one of {CHUNKED_LOGPROBS_MODES}, not {mode!r}")
    return mode == "on" or (mode == "auto" and not torch.cuda.is_available())


def install_chunked_lm_head(model: nn.Module, mode: str = "auto") -> bool:
    """Make ``model(..., labels=L, fused_lm_head=True)`` (TRL 1.16's fused-head call) use :func:`label_logprobs`.

    TRL's ``SFTTrainer`` and ``DPOTrainer`` compute their losses through that call (TRL patches it in when the
    trainer is built); this replaces TRL's patch on ``model``'s causal LM, keeping its contract: a
    ``trl.trainer.utils.FusedCausalLMOutput`` with ``loss`` (mean over labelled tokens, or sum /
    ``num_items_in_batch``), ``log_probs``, ``entropy``, ``is_top1``, ``mean_logits`` and ``label_mask``, each
    ``[B, T-1]`` and zero where the label is ``-100``. Every other call goes to the forward as it was. Call it
    after the trainer is built. Returns whether it was installed: not for ``mode`` off (:func:`use_chunked_logprobs`),
    nor where :func:`output_weight` is None or the config asks for MoE router logits (TRL's head then stays).
    """
    from trl.trainer.utils import FusedCausalLMOutput

    causal_lm = causal_lm_of(model)
    config = causal_lm.config.get_text_config()
    if (not use_chunked_logprobs(mode) or output_weight(causal_lm) is None
            or getattr(config, "output_router_logits", False)):
        return False
    if getattr(causal_lm, _INSTALLED, False):
        return True
    wrapped = causal_lm.forward  # TRL's fused forward, which passes unfused calls to the model's own

    @functools.wraps(type(causal_lm).forward)  # generate() checks its keyword arguments against this signature
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None,  # noqa: ANN001, ANN202
                num_items_in_batch=None, **kwargs):
        if not fused_lm_head:
            extra = {"labels": labels, "shift_labels": shift_labels, "num_items_in_batch": num_items_in_batch}
            return wrapped(*args, **kwargs, **{k: v for k, v in extra.items() if v is not None})
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:  # pre-shifted labels arrive under context parallelism
            hidden, shift_labels = hidden[:, :-1], labels[:, 1:]
        scored, mask = hidden_label_logprobs(self, hidden, shift_labels)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-scored.log_probs.sum() / count, log_probs=scored.log_probs,
                                   entropy=scored.entropy, is_top1=scored.is_top1, mean_logits=scored.mean_logits,
                                   label_mask=mask)

    causal_lm.forward = types.MethodType(forward, causal_lm)
    setattr(causal_lm, _INSTALLED, True)
    return True
