"""Giving memory back: weights off the checkpoint file's memory map, and freed heap back to the system.

Two things keep a CPU process's resident memory far above what its tensors hold, both measured on the stages'
4-bit path (BENCHMARKS.md §6):

- ``from_pretrained`` reads a safetensors checkpoint through a memory map. A weight it keeps in the file's dtype
  (the embeddings and norms of a 4-bit model loaded in fp32) stays a view into that map, and while one view lives
  the whole mapped file stays resident: 420 MB of SmolLM2-135M's fp32 file for the 113 MB embedding it uses.
  :func:`own_mapped_weights` copies such weights into memory of their own, so the map is released.
- glibc keeps freed heap for reuse: after a phase that allocated and freed much (loading, a sampling call with
  its dense copy of the base) the process stays at its high-water mark. :func:`release_freed_memory` hands the
  free pages back (``malloc_trim``), so the next phase starts from what is live, not from the last peak.
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import nn


def own_mapped_weights(model: nn.Module) -> int:
    """Copy every CPU parameter and buffer that is not a packed 4-bit weight into memory of its own; returns how many.

    A tensor shared by two modules (tied embeddings) is copied once and stays shared.
    """
    copied = 0
    seen: set[int] = set()
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if id(tensor) in seen or tensor.device.type != "cpu" or type(tensor).__name__ == "Params4bit":
                continue
            seen.add(id(tensor))
            tensor.data = tensor.data.clone()
            copied += 1
    return copied


@functools.cache
def _malloc_trim():  # noqa: ANN202 (a ctypes function, or None where the C library has none)
    try:  # the symbols the process has loaded already: glibc's, on Linux (no ldconfig lookup)
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows): nothing to trim with
        return None


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim``; 25 ms a call measured in GRPO's
    update, less on a smaller heap); whether it could.

    Tensors are freed when their last reference goes, so no garbage collection is run first.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
