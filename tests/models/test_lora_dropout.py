"""LoRA dropout folded into lora_A: PEFT's numbers with less memory kept for the backward pass."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from lightalign.models import LoraSettings, Quantization, apply_lora, load_base_model, lora_dropout
from lightalign.models.lora_dropout import DropoutLoraA, draw_keep_mask, fold_lora_dropout

TINY = "lightalign:tiny-random"


def _model(quant, *, fold: bool, dropout: float = 0.3):
    torch.manual_seed(0)  # the LoRA A matrices are drawn from the global generator
    model = apply_lora(load_base_model(TINY, quant, compute_dtype=torch.float32),
                       LoraSettings(r=4, alpha=8, dropout=dropout))
    if not fold:  # undo apply_lora's folding: PEFT's own nn.Dropout in front of a plain lora_A
        for layer in model.modules():
            if isinstance(getattr(layer, "lora_A", None), torch.nn.ModuleDict):
                for name, lora_a in layer.lora_A.items():
                    plain = torch.nn.Linear(lora_a.in_features, lora_a.out_features, bias=False)
                    plain.weight = lora_a.weight
                    layer.lora_A[name] = plain
                    layer.lora_dropout[name] = torch.nn.Dropout(dropout)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero B, so the dropout shows in the loss and every gradient
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def _step(model):
    """Loss, LoRA gradients and the bytes autograd keeps for the backward pass, for one seeded training step."""
    model.train()
    ids = torch.randint(3, 200, (3, 24), generator=torch.Generator().manual_seed(2))
    kept: dict[int, int] = {}

    def pack(tensor):
        kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    torch.manual_seed(5)  # the same dropout masks for both models
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads, sum(kept.values())


@pytest.mark.parametrize("quant", [None, Quantization()], ids=["full-precision", "nf4"])
def test_folded_dropout_gives_peft_s_loss_and_gradients_with_less_memory(quant, monkeypatch):
    # nn.Dropout's own draws (one bernoulli_ per element), so both models drop the same elements
    monkeypatch.setattr(lora_dropout, "draw_keep_mask",
                        lambda shape, p, device: (torch.empty(shape).bernoulli_(1 - p).bool(), p))
    peft_loss, peft_grads, peft_bytes = _step(_model(quant, fold=False))
    loss, grads, kept = _step(_model(quant, fold=True))
    assert loss == peft_loss  # the same random numbers, the same arithmetic
    assert grads.keys() == peft_grads.keys() and len(grads) == 28
    for name, grad in grads.items():
        torch.testing.assert_close(grad, peft_grads[name], rtol=1e-6, atol=1e-8, msg=name)
    # PEFT keeps the fp32 noise and the dropped-out input of all 7 adapted layers; the fold keeps each distinct
    # input once (q, k and v share theirs; so do gate and up) plus a 1-byte mask per layer
    assert kept < peft_bytes - 200_000


def test_the_fast_cpu_mask_keeps_each_element_with_probability_one_minus_p():
    torch.manual_seed(0)
    keep, p = draw_keep_mask(torch.Size([1001, 999]), 0.05, torch.device("cpu"))  # not a multiple of 4 elements
    assert keep.shape == (1001, 999) and keep.dtype == torch.bool
    assert p == 3277 / 65536  # 0.05 to 1/65536
    assert 1 - keep.float().mean().item() == pytest.approx(p, abs=0.001)  # 1e6 draws: SE 0.0002
    for lane in range(4):  # each of the four 16-bit lanes of a 64-bit draw drops at the same rate
        assert 1 - keep.flatten()[lane::4].float().mean().item() == pytest.approx(p, abs=0.002)
    # neighbours are independent: the chance both are dropped is p squared, not p
    both = (~keep.flatten()[:-1] & ~keep.flatten()[1:]).float().mean().item()
    assert both == pytest.approx(p * p, abs=0.0005)
    torch.manual_seed(0)
    assert torch.equal(draw_keep_mask(torch.Size([1001, 999]), 0.05, torch.device("cpu"))[0], keep)  # seeded
    assert not torch.equal(draw_keep_mask(torch.Size([1001, 999]), 0.05, torch.device("cpu"))[0], keep)


def test_the_dropout_is_applied_in_training_and_not_in_eval():
    layer = DropoutLoraA(torch.nn.Linear(1000, 1, bias=False), torch.nn.Dropout(0.25))
    torch.nn.init.ones_(layer.weight)
    x = torch.ones(200, 1000)
    layer.train()
    kept = layer(x).squeeze(1) * 0.75  # each output sums the kept inputs, scaled by 1 / (1 - p)
    assert kept.mean().item() == pytest.approx(750, rel=0.01) and kept.std() > 5
    layer.eval()
    assert torch.equal(layer(x), x @ layer.weight.t())


def test_turning_every_nn_dropout_off_turns_the_folded_one_off():
    from trl.trainer.utils import disable_dropout_in_model  # what TRL's trainers do by default (disable_dropout)

    model = _model(Quantization(), fold=True, dropout=0.5).train()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)  # dropout on
    disable_dropout_in_model(model)
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_the_adapter_keeps_its_names_and_saves_and_loads_as_before(tmp_path):
    model = _model(Quantization(), fold=True, dropout=0.1)
    assert sum(isinstance(m, DropoutLoraA) for m in model.modules()) == 14
    assert all(isinstance(m, torch.nn.Identity) for n, m in model.named_modules() if n.endswith("lora_dropout.default"))
    assert fold_lora_dropout(model) == 0  # already folded
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load_base_model(TINY, Quantization(), compute_dtype=torch.float32),
                                         tmp_path / "adapter")
    assert reloaded.peft_config["default"].lora_dropout == 0.1
    ours = {n: p for n, p in model.named_parameters() if "lora_" in n}
    theirs = {n: p for n, p in reloaded.named_parameters() if "lora_" in n}
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[n].float(), theirs[n].float()) for n in ours)


def test_no_dropout_means_nothing_to_fold():
    model = _model(Quantization(), fold=True, dropout=0.0)
    assert not any(isinstance(m, DropoutLoraA) for m in model.modules())
