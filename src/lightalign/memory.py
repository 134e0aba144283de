"""Giving memory back: weights off the checkpoint file's memory map, and freed heap back to the system.

Three things keep a CPU process's resident memory far above what its tensors hold, all measured on the stages'
4-bit path (BENCHMARKS.md §6):

- ``from_pretrained`` reads a safetensors checkpoint through a memory map. A weight it keeps in the file's dtype
  (the embeddings and norms of a 4-bit model loaded in fp32) stays a view into that map, and while one view lives
  the whole mapped file stays resident: 420 MB of SmolLM2-135M's fp32 file for the 113 MB embedding it uses.
  :func:`own_mapped_weights` copies such weights into memory of their own, so the map is released.
- glibc keeps freed heap for reuse: after a phase that allocated and freed much (loading, a sampling call with
  its dense copy of the base) the process stays at its high-water mark. :func:`release_freed_memory` hands the
  free pages back (``malloc_trim``), so the next phase starts from what is live, not from the last peak.
- While ``from_pretrained`` quantises a checkpoint it reads every weight through the map, and each page it read
  stays resident in the process until the map goes: the whole file (538 MB for SmolLM2-135M in fp32) on top of
  what loading builds. :func:`pages_released` pages the map out (``madvise(MADV_PAGEOUT)``) every fraction of a
  second while the block runs: pages already quantised are not read again, and one that is comes back from the
  file, so nothing changes but the resident set.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim the range now; file pages are dropped, never lost (unlike DONTNEED)


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


def _mapped_ranges(prefixes: tuple[str, ...]) -> list[tuple[int, int]]:
    """``(start, end)`` of this process's memory maps of files whose real path starts with one of ``prefixes``."""
    ranges = []
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:  # not Linux
        return []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith(prefixes):
            start, end = fields[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


def _location_key(location: str | Path) -> str:
    """A file's real path, or a folder's with a trailing separator (``/a/b`` must not match ``/a/bc/x``)."""
    real = os.path.realpath(location)
    return real if os.path.isfile(real) else real + os.sep


def page_out_mapped_files(prefixes: Iterable[str | Path]) -> int:
    """Page out this process's memory maps of files under ``prefixes`` (folders or files); returns the bytes advised.

    Safe at any time: ``MADV_PAGEOUT`` drops clean file pages, which come back from the file when read again,
    and leaves a page the process wrote to (a private copy) resident where there is no swap. 0 where the
    system has no such call (not Linux, or a kernel before 5.4: ``madvise`` then fails and nothing changes).
    """
    madvise = _c_function("madvise", (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int))
    keys = tuple(_location_key(p) for p in prefixes)
    if madvise is None or not keys:
        return 0
    advised = 0
    for start, end in _mapped_ranges(keys):
        if madvise(start, end - start, MADV_PAGEOUT) == 0:
            advised += end - start
    return advised


@contextmanager
def pages_released(prefixes: Iterable[str | Path], every: float = 0.2) -> Iterator[None]:
    """While the block runs, page out the maps of files under ``prefixes`` every ``every`` seconds, and once at its
    end; a daemon thread does it (``madvise`` runs without the GIL), so the block itself is not touched.

    Meant for loading a checkpoint that is converted as it is read (4-bit quantisation on a CPU): without it the
    pages of every weight already quantised stay resident until the map is closed.
    """
    prefixes = list(prefixes)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            page_out_mapped_files(prefixes)

    worker = threading.Thread(target=loop, name="lightalign-page-out", daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()
        page_out_mapped_files(prefixes)


@functools.cache
def _c_function(name: str, argtypes: tuple | None = None):  # noqa: ANN202 (a ctypes function, or None)
    """The C library function ``name`` among the symbols the process has loaded already (glibc's, on Linux: no
    ``ldconfig`` lookup), or None where there is none (musl has no ``malloc_trim``; macOS, Windows)."""
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError, TypeError):
        return None
    if argtypes is not None:
        function.argtypes = list(argtypes)
    return function


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim``; 25 ms a call measured in GRPO's
    update, less on a smaller heap); whether it could.

    Tensors are freed when their last reference goes, so no garbage collection is run first.
    """
    trim = _c_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True
