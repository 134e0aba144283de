"""Statistics over the real tokens of right-padded ``[B, T]`` tensors (``mask`` 1 for a real token, 0 for padding).

Padding never changes a result: it is replaced by 0 before any sum, so even a NaN or inf there cannot leak.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (over all dims, or along ``dim``).

    Example:
        >>> masked_mean(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1, 1, 0]]))
        tensor(2.)
    """
    mask = mask.to(x.dtype)
    # where() rather than x * mask, so a NaN or inf at a padding position cannot leak into the sum.
    total = torch.where(mask.bool(), x, torch.zeros_like(x))
    if dim is None:
        return total.sum() / mask.sum().clamp(min=1)
    return total.sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the masked positions (Bessel-corrected by default, as in the old TRL)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        # clamp: with a single real position the variance is 0 either way; avoids a divide by zero
        # without a host sync on the count.
        count = mask.to(x.dtype).sum()
        var = var * count / (count - 1).clamp(min=1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Normalise ``x`` to unit variance (and zero mean) using statistics of the masked positions only.

    Args:
        x: values to whiten, e.g. advantages ``[B, T]``.
        mask: 1 for real positions, 0 for padding; padding is returned as 0.
        shift_mean: if False, keep the original mean (only rescale); used to whiten rewards without
            turning a consistently good batch into a half-bad one.

    Returns:
        The whitened tensor, same shape as ``x``.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))
