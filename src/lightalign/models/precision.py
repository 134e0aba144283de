"""Choose training precision and 4-bit compute dtype for the hardware at hand.

bf16 where the GPU supports it, fp16 on older GPUs (T4, V100, 10xx/20xx cards), fp32 on CPU: a
TRL config left at its default (bf16=True) fails on GPUs without bf16 and is slow on CPU autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    """Mixed-precision flags for a trainer and the dtype 4-bit layers compute in."""

    bf16: bool
    fp16: bool
    compute_dtype: torch.dtype

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices faster than fp32 ones: it has AMX tiles (Intel Sapphire Rapids on).

    Without AMX, oneDNN's bf16 is slower than fp32, whether emulated (an AVX2-only AMD EPYC: a 4-bit layer
    computing in bf16 was measured 4.5x slower than in fp32) or native (AVX512-BF16 without AMX: a 512x576 by
    576x1536 product at 152 against 252 GFLOP/s, and a GRPO step 30.8 s against 22.2 s in fp32; BENCHMARKS.md §6).
    """
    is_amx_supported = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch >= 2.3
    if is_amx_supported is None:
        return False
    try:
        return bool(is_amx_supported()) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def resolve_precision(requested: str = "auto") -> Precision:
    """Resolve ``auto|bf16|fp16|fp32`` (``trainer.precision``, checked by its schema) against the available device.

    On CPU the trainer runs in fp32 while 4-bit layers compute in bf16 where the CPU has AMX (it halves the
    dequantised weight traffic and the matrix products run on the tiles), else in fp32 (:func:`cpu_has_fast_bf16`).
    """
    cuda = torch.cuda.is_available()
    if requested == "auto":
        if not cuda:
            return Precision(bf16=False, fp16=False,
                             compute_dtype=torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
        requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "bf16":
        return Precision(bf16=cuda, fp16=False, compute_dtype=torch.bfloat16)
    if requested == "fp16":
        return Precision(bf16=False, fp16=cuda, compute_dtype=torch.float16)
    return Precision(bf16=False, fp16=False, compute_dtype=torch.float32)
