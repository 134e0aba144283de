"""A frozen 4-bit linear layer that dequantises its weight once per forward, not again in the backward.

bitsandbytes' ``Linear4bit`` dequantises its NF4 weight in the forward pass and keeps only the packed weight for
the backward pass, which dequantises it a second time to compute the input's gradient. With gradient
checkpointing a layer's forward runs twice (once without keeping anything, once again just before its backward),
so every training step dequantises every base weight three times. On a CPU the dequantisation is not fused into
the matmul, but it was only 3-4% of a checkpointed SFT step in bench/sft_profile.py (LoRA dropout's masks were
what made checkpointing expensive, BENCHMARKS.md §1): this saves that third pass, a few percent of a step.

:func:`keep_dequantized_for_backward` makes each 4-bit layer's forward (:class:`_DequantizedLinear`) keep the
dense weight it has just made, for its own backward. Under checkpointing that costs the dense weights of *one*
decoder layer at a time: the checkpointed first forward keeps nothing, the recomputation keeps the weights of the
layer being differentiated, and they are freed once its backward is done. Two dequantisations a step, as without
checkpointing. Without checkpointing the same change would hold a dense copy of the whole base until the
backward pass, the memory QLoRA exists to save, so it is installed only together with checkpointing
(:func:`lightalign.models.adapters.prepare_for_training`). The outputs and gradients are those of bitsandbytes'
own path (the same dequantisation, the same matmul; tested).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _DequantizedLinear(torch.autograd.Function):
    """``x @ dequantize(W).T + b`` for a frozen 4-bit ``W``, keeping the dense ``W`` for the input's gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, packed: Tensor, quant_state, bias: Tensor | None) -> Tensor:  # noqa: ANN001
        import bitsandbytes.functional as bnbf

        weight = bnbf.dequantize_4bit(packed, quant_state).to(x.dtype)
        ctx.save_for_backward(weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, None, None, None]:  # noqa: ANN001
        (weight,) = ctx.saved_tensors
        grad_x = grad_out.to(weight.dtype) @ weight if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None


def _forward(self: nn.Module, x: Tensor) -> Tensor:
    """``Linear4bit.forward`` for a frozen layer whose input needs a gradient; bitsandbytes' own path otherwise."""
    quant_state = getattr(self.weight, "quant_state", None)
    if (not (torch.is_grad_enabled() and x.requires_grad) or self.weight.requires_grad or quant_state is None
            or getattr(quant_state, "packing_format_for_cpu", False)):  # a layout only bitsandbytes' kernel reads
        return type(self).forward(self, x)
    if not self.compute_type_is_set:
        self.set_compute_type(x)
        self.compute_type_is_set = True
    dtype = x.dtype
    if self.compute_dtype is not None:
        x = x.to(self.compute_dtype)
    bias = None if self.bias is None else self.bias.to(x.dtype)
    return _DequantizedLinear.apply(x, self.weight, quant_state, bias).to(dtype)


def keep_dequantized_for_backward(model: nn.Module) -> int:
    """Give every bitsandbytes ``Linear4bit`` in ``model`` the forward of this module; returns how many.

    Call it only where gradient checkpointing is on (see the module docstring). Idempotent.
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:  # no bitsandbytes: no 4-bit layers
        return 0
    changed = 0
    for module in model.modules():
        if isinstance(module, Linear4bit) and getattr(module.forward, "__func__", None) is not _forward:
            module.forward = types.MethodType(_forward, module)
            changed += 1
    return changed
