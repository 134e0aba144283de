"""The GPU path on tiny-random: 4-bit load, LoRA training steps, chunked log-probs and folded dropout on CUDA.

Skipped without CUDA (``gpu`` mark, tests/conftest.py); ``bench/gpu_check.sh`` runs them on a GPU machine.
"""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch

from lightalign.models import LoraSettings, Quantization, apply_lora, load_base_model, resolve_precision
from lightalign.models.logprobs import install_chunked_lm_head, label_logprobs
from lightalign.models.lora_dropout import DropoutLoraA

pytestmark = pytest.mark.gpu
TINY = "lightalign:tiny-random"


def _model(dropout: float = 0.0):
    precision = resolve_precision("auto")
    torch.manual_seed(0)
    model = apply_lora(load_base_model(TINY, Quantization(), compute_dtype=precision.compute_dtype),
                       LoraSettings(r=4, alpha=8, dropout=dropout))
    return model, precision


def test_a_4bit_base_with_lora_trains_on_cuda():
    model, precision = _model(dropout=0.05)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer.base_layer, bnb.nn.Linear4bit) and layer.base_layer.weight.device.type == "cuda"
    assert layer.lora_A["default"].weight.dtype == torch.float32  # fp32 adapters (upcast_trainable)
    ids = torch.randint(3, 200, (4, 32), generator=torch.Generator().manual_seed(0)).cuda()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    losses = []
    for _ in range(5):
        with torch.autocast("cuda", dtype=precision.compute_dtype, enabled=precision.bf16 or precision.fp16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # the same batch five times: the adapter learns it
    assert all(p.dtype == torch.float32 for p in trainable)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_label_logprobs_on_cuda_match_the_full_log_softmax(dtype):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(300, 64, generator=generator).cuda().to(dtype).requires_grad_()
    weight = torch.randn(5000, 64, generator=generator).cuda().to(dtype)
    labels = torch.randint(0, 5000, (300,), generator=generator).cuda()
    ours = label_logprobs(hidden, weight, labels, chunk_tokens=64)
    ours.log_probs.sum().backward()
    grad, hidden.grad = hidden.grad, None
    expected = torch.log_softmax((hidden @ weight.t()).float(), -1).gather(1, labels[:, None]).squeeze(1)
    expected.sum().backward()
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(ours.log_probs, expected, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(grad.float(), hidden.grad.float(), rtol=tolerance, atol=tolerance)


def test_the_chunked_head_gives_the_models_own_loss_on_cuda_under_autocast():
    model, precision = _model()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    ids = torch.randint(3, 200, (4, 48), generator=torch.Generator().manual_seed(1)).cuda()
    labels = ids.clone()
    labels[:, :16] = -100
    assert install_chunked_lm_head(model, "on")
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        plain = model(input_ids=ids, labels=labels).loss
        fused = model(input_ids=ids, labels=labels, fused_lm_head=True).loss
    assert fused.item() == pytest.approx(plain.item(), rel=1e-2)
    fused.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_folded_dropout_on_cuda_under_autocast_gives_the_dropout_formula():
    layer = DropoutLoraA(torch.nn.Linear(64, 8, bias=False).cuda(), torch.nn.Dropout(0.3)).train()
    x = torch.randn(4, 10, 64, device="cuda", requires_grad=True)
    torch.manual_seed(7)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = layer(x)
    out.float().square().sum().backward()
    grads = x.grad.clone(), layer.weight.grad.clone()
    x.grad, layer.weight.grad = None, None

    torch.manual_seed(7)  # the same draw, written out: (x * bernoulli(0.7) / 0.7) @ A.T
    noise = torch.empty_like(x).bernoulli_(0.7).div_(0.7)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        expected = torch.nn.functional.linear(x * noise, layer.weight)
    expected.float().square().sum().backward()
    assert out.dtype == expected.dtype == torch.bfloat16 and torch.equal(out, expected)
    assert layer.weight.grad.dtype == torch.float32
    torch.testing.assert_close(grads[0], x.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grads[1], layer.weight.grad, rtol=2e-2, atol=2e-2)
