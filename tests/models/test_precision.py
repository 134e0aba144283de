"""Precision: explicit choices hold; ``auto`` on CPU computes 4-bit layers in bf16 only where bf16 is fast (AMX)."""

import pytest
import torch

from lightalign.models import precision


@pytest.mark.parametrize(("fast_bf16", "dtype"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cpu_uses_bf16_compute_only_where_it_is_native(monkeypatch, fast_bf16, dtype):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast_bf16)
    chosen = precision.resolve_precision("auto")
    assert chosen.compute_dtype == dtype and chosen.name == "fp32"  # the trainer itself stays fp32 on CPU


def test_explicit_choices(monkeypatch):  # a typo is the schema's to catch (tests/config/test_schema.py)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.resolve_precision("fp32").compute_dtype == torch.float32
    assert precision.resolve_precision("bf16").compute_dtype == torch.bfloat16
