"""bitsandbytes imported after lightalign on a CPU machine: no compiler stack, the same 4-bit kernels."""

import subprocess
import sys

import pytest
import torch

from lightalign import lean_imports

_CHILD = """
import sys
import torch
import lightalign
original_compile = torch.compile
import bitsandbytes as bnb
from bitsandbytes.functional import dequantize_4bit, quantize_4bit
weight = torch.randn(64, 128)
packed, state = quantize_4bit(weight, blocksize=64, quant_type="nf4")
error = (dequantize_4bit(packed, state) - weight).abs().mean().item()
print(repr(dict(
    compile_fx="torch._inductor.compile_fx" in sys.modules,
    compile_restored=torch.compile is original_compile,
    finder_left=any(type(f).__name__ == "_BitsandbytesFinder" for f in sys.meta_path),
    loader=type(bnb.__spec__.loader).__name__,
    error=error,
)))
"""


@pytest.mark.skipif(lean_imports._has_accelerator(), reason="the wrappers are only skipped without an accelerator")
def test_bitsandbytes_after_lightalign_imports_no_compiler_and_still_quantises():
    done = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True)
    seen = eval(done.stdout.strip().splitlines()[-1])  # noqa: S307 (our own child's repr of a dict)
    assert seen["compile_fx"] is False  # inductor (42 MB) was not imported for bitsandbytes
    assert seen["compile_restored"] and not seen["finder_left"]
    assert seen["loader"] == "_LoaderWithoutCompile"
    assert 0 < seen["error"] < 0.15  # NF4 round trip of N(0, 1) weights: ~0.07 mean absolute error


def test_torch_compile_refused_only_inside_the_block_even_when_it_raises():
    original = torch.compile
    with pytest.raises(KeyError), lean_imports.torch_compile_refused():
        with pytest.raises(lean_imports.CompileRefused):
            torch.compile(lambda x: x)
        raise KeyError("boom")
    assert torch.compile is original


def test_install_is_idempotent_and_skipped_once_bitsandbytes_is_imported(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    lean_imports.uninstall()
    monkeypatch.setitem(sys.modules, "bitsandbytes", object())
    lean_imports.install()
    assert not any(isinstance(f, lean_imports._BitsandbytesFinder) for f in sys.meta_path)
    monkeypatch.delitem(sys.modules, "bitsandbytes")
    lean_imports.install()
    lean_imports.install()
    assert sum(isinstance(f, lean_imports._BitsandbytesFinder) for f in sys.meta_path) == 1
