"""LoRA dropout that keeps a one-byte mask for the backward pass instead of two copies of its input.

PEFT computes an adapter's update as ``lora_B(lora_A(dropout(x)))``. For the backward pass autograd then keeps
the dropped-out input (``lora_A`` needs it for its weight gradient) and, on a CPU, the dropout's fp32 noise
(torch's CPU dropout is ``x * noise``): two input-sized fp32 tensors per adapted layer, and q, k and v keep
their own although they read the same ``x``. On SmolLM2-135M (LoRA on all linear layers) that was 470 of the
884 MB autograd kept in an SFT step (BENCHMARKS.md §1).

:func:`fold_lora_dropout` replaces each adapter's ``lora_A`` by :class:`DropoutLoraA`, which computes
``dropout(x) @ A.T`` in one autograd function that keeps ``x`` (shared by every layer that reads it) and a
boolean mask, and redoes the dropout in the backward pass; the adapter's ``lora_dropout`` becomes the identity.
The weights, their names and the saved adapter are unchanged. The masks have ``nn.Dropout``'s distribution but
are drawn faster (:func:`draw_keep_mask`), so they are not the masks ``nn.Dropout`` would draw from the same seed;
given the same mask the numbers are PEFT's (tested).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def draw_keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[Tensor, float]:
    """A boolean mask keeping each element with probability ``1 - p``, and the drop probability it really has.

    On a CPU torch draws one Mersenne-Twister number per element whatever the dtype (``bernoulli_``, ``rand``):
    that was 28% of an SFT step's time on SmolLM2-135M (bench/sft_profile.py). Here each 64-bit draw gives four
    16-bit lanes, each compared with ``p`` rounded to 1/65536: about 4x faster, the same distribution up to that
    rounding (0.05 becomes 0.0500031, and the caller scales by the rounded value, so the mean is kept exactly).
    Elsewhere (CUDA's fast Philox generator) the mask is ``bernoulli_(1 - p)`` and ``p`` is returned unchanged.
    """
    if device.type != "cpu":
        return torch.empty(shape, device=device).bernoulli_(1 - p).bool(), p
    count = math.prod(shape)
    threshold = round(p * 65536)
    words = torch.randint(-(2**63), 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64)
    lanes = words.view(torch.int16)[:count]  # uniform over [-32768, 32767]
    return (lanes >= threshold - 32768).view(shape), threshold / 65536


class _DropoutMatmul(torch.autograd.Function):
    """``(x * noise) @ weight.T`` with ``noise = keep / (1 - p)`` (:func:`draw_keep_mask`), keeping ``x`` and the
    bool mask."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, p: float) -> Tensor:  # noqa: ANN001
        keep, p = draw_keep_mask(x.shape, p, x.device)
        dropped = x * keep.to(x.dtype).div_(1 - p)
        ctx.save_for_backward(x, keep, weight)
        ctx.p = p
        return F.linear(dropped, weight)  # under autocast this runs in the autocast dtype, as nn.Linear would

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # noqa: ANN001
        x, keep, weight = ctx.saved_tensors
        # The backward runs outside autocast: the math in the adapter's dtype (fp32), cast back at the end.
        grad_out = grad_out.to(weight.dtype)
        noise = keep.to(weight.dtype).div_(1 - ctx.p)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_out @ weight).mul_(noise).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dropped = x.to(weight.dtype) * noise
            grad_weight = grad_out.reshape(-1, grad_out.shape[-1]).t() @ dropped.reshape(-1, dropped.shape[-1])
        return grad_x, grad_weight, None


class DropoutLoraA(nn.Linear):
    """An adapter's ``lora_A`` (bias-free ``nn.Linear``, same weight) with its dropout folded in.

    ``forward(x)`` is PEFT's ``lora_A(dropout(x))`` through :class:`_DropoutMatmul`. The adapter's ``nn.Dropout``
    lives on as the child ``dropout`` and decides: its ``p`` and training mode are read at every call, so code
    that turns dropout off by setting ``p = 0`` on every ``nn.Dropout`` (TRL's ``disable_dropout``) still does.
    """

    def __init__(self, lora_a: nn.Linear, dropout: nn.Dropout) -> None:
        super().__init__(lora_a.in_features, lora_a.out_features, bias=False, device="meta")
        self.weight = lora_a.weight  # the same Parameter: its name, its optimizer state and the saved adapter stay
        self.dropout = dropout  # holds no tensors: the state dict keeps its keys
        self.train(lora_a.training)

    def forward(self, x: Tensor) -> Tensor:
        if not self.dropout.training or self.dropout.p == 0:
            return F.linear(x, self.weight)
        return _DropoutMatmul.apply(x, self.weight, self.dropout.p)


def fold_lora_dropout(model: nn.Module) -> int:
    """Fold every plain LoRA adapter's dropout into its ``lora_A`` (:class:`DropoutLoraA`); returns how many.

    Adapters with a variant (DoRA, ...) inspect their dropout module and keep it; so do adapters without dropout.
    Safe to call again after adapters are added.
    """
    from peft.tuners.lora import LoraLayer

    folded = 0
    for layer in model.modules():
        if not isinstance(layer, LoraLayer):
            continue
        for name, dropout in layer.lora_dropout.items():
            lora_a = layer.lora_A[name] if name in layer.lora_A else None
            if (not isinstance(dropout, nn.Dropout) or type(lora_a) is not nn.Linear or lora_a.bias is not None
                    or name in getattr(layer, "lora_variant", {})):
                continue
            layer.lora_A[name] = DropoutLoraA(lora_a, dropout)
            layer.lora_dropout[name] = nn.Identity()
            folded += 1
    return folded
