"""Import bitsandbytes without building ``torch.compile`` wrappers for kernels a CPU run never calls.

bitsandbytes (0.50) wraps a few functions of its default backend in ``torch.compile`` while it is imported, and
building those wrappers imports torch's compiler stack (dynamo, inductor, sympy). transformers imports dynamo
itself; inductor is what the wrappers add: 42 MB of resident memory and ~1.5 s in every process that loads a
4-bit model (bitsandbytes 0.50.2, torch 2.13, transformers 5.24, a 2-core CPU; BENCHMARKS.md §6). On a CPU the
4-bit ops lightalign calls (NF4, block size 64, even shapes) run bitsandbytes' own CPU kernels; the compiled
functions are fallbacks (block sizes of 2048 and more, odd shapes, its 32-bit optimizers), which then run as
plain eager functions: the same results, without compilation. On a machine with an accelerator nothing is
skipped: memory is counted on the device there, and the compiled fallbacks may matter.

:func:`install` (run when ``lightalign`` is imported) puts a finder first on ``sys.meta_path`` that, the first
time anything imports ``bitsandbytes``, runs its module body with ``torch.compile`` refusing (bitsandbytes
catches the refusal and keeps the plain function), then removes itself. It does nothing when bitsandbytes was
imported before lightalign.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

PACKAGE = "bitsandbytes"


class CompileRefused(RuntimeError):
    """Raised by ``torch.compile`` while bitsandbytes is imported on a machine without an accelerator."""


@contextmanager
def torch_compile_refused() -> Iterator[None]:
    """``torch.compile`` raises :class:`CompileRefused` inside the block (restored after it, whatever happens)."""
    import torch

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise CompileRefused("lightalign: torch.compile is skipped while bitsandbytes is imported on CPU")

    original = torch.compile
    torch.compile = refuse
    try:
        yield
    finally:
        torch.compile = original


def _has_accelerator() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None:
        return bool(accelerator.is_available())
    return bool(torch.cuda.is_available())


class _LoaderWithoutCompile(importlib.abc.Loader):
    """bitsandbytes' own loader, with its module body run under :func:`torch_compile_refused`."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        if _has_accelerator():
            self._inner.exec_module(module)
            return
        with torch_compile_refused():
            self._inner.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # resource readers, get_filename, is_package: the inner loader's
        return getattr(self._inner, name)


class _BitsandbytesFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != PACKAGE:
            return None
        uninstall()  # one import only; the lookup below goes through the other finders
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _LoaderWithoutCompile(spec.loader)
        return spec


def install() -> None:
    """Put the finder first on ``sys.meta_path`` unless bitsandbytes is imported already (or it is there)."""
    if PACKAGE in sys.modules or any(isinstance(finder, _BitsandbytesFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _BitsandbytesFinder())


def uninstall() -> None:
    """Take the finder off ``sys.meta_path`` (a no-op when it is not there)."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _BitsandbytesFinder)]
