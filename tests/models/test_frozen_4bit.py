"""Frozen 4-bit layers that keep their dequantised weight for the backward pass (lightalign.models.frozen_4bit):
the same loss and adapter gradients as bitsandbytes' own path, one dequantisation fewer, only with checkpointing."""

from __future__ import annotations

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import pytest
import torch

from lightalign.models import LoraSettings, Quantization, apply_lora, load_base_model
from lightalign.models.frozen_4bit import _forward

TINY = "lightalign:tiny-random"


def _four_bit_layers(model: torch.nn.Module) -> list[bnb.nn.Linear4bit]:
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def _loss_and_grads(model: torch.nn.Module) -> tuple[float, dict[str, torch.Tensor]]:
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(1))
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def _model(gradient_checkpointing: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = apply_lora(load_base_model(TINY, Quantization()), LoraSettings(r=8, alpha=16, dropout=0.0),
                       gradient_checkpointing=gradient_checkpointing)
    with torch.no_grad():  # a non-zero B, so the gradients below depend on the base path's input gradients
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2, generator=torch.Generator().manual_seed(hash(name) % 2**31))
    return model


def test_only_checkpointing_installs_it():
    assert all(layer.forward.__func__ is _forward for layer in _four_bit_layers(_model(True)))
    assert not any(hasattr(layer.forward, "__func__") and layer.forward.__func__ is _forward
                   for layer in _four_bit_layers(_model(False)))


def test_same_loss_and_adapter_gradients_as_bitsandbytes_path_with_one_dequantisation_fewer(monkeypatch):
    model = _model(True)
    calls = []
    dequantize = bnbf.dequantize_4bit
    monkeypatch.setattr(bnbf, "dequantize_4bit", lambda *a, **k: calls.append(1) or dequantize(*a, **k))
    loss, grads = _loss_and_grads(model)
    ours = len(calls)

    for layer in _four_bit_layers(model):
        del layer.forward  # bitsandbytes' own forward (the class's) again
    calls.clear()
    reference_loss, reference_grads = _loss_and_grads(model)

    assert loss == pytest.approx(reference_loss, abs=1e-6)
    assert grads.keys() == reference_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    layers = len(_four_bit_layers(model))
    # ours: the checkpointed forward and its recomputation (the backward reuses the weight); bitsandbytes' backward
    # dequantises again (its forward goes through its own gemm op, which this count does not see)
    assert ours == 2 * layers
    assert len(calls) == layers


def test_no_gradient_no_kept_weight():
    model = _model(True)
    layer = _four_bit_layers(model)[0]
    x = torch.randn(2, layer.in_features)
    with torch.no_grad():
        assert not layer(x).requires_grad
    node, names = layer(x.requires_grad_()).grad_fn, []
    while node is not None:  # the graph from the output back to x: casts, then our function
        names.append(type(node).__name__)
        node = node.next_functions[0][0] if node.next_functions else None
    assert "_DequantizedLinearBackward" in names
