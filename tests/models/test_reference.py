"""The one rule for the reference model: the frozen SFT adapter when the policy starts from one, else the base."""

import json

import bitsandbytes as bnb
import pytest
import torch

from lightalign.errors import ConfigError
from lightalign.models import LoraSettings, Quantization, apply_lora, load_base_model
from lightalign.models.reference import (
    REFERENCE_ADAPTER,
    load_policy,
    reference_kind,
    resolve_adapter_dir,
    set_up_reference,
    use_reference,
)

LORA = LoraSettings(r=4, alpha=8, dropout=0.0)
IDS = torch.tensor([[3, 40, 41, 42, 43, 44]])


def _base(tiny_model_dir):
    return load_base_model(str(tiny_model_dir), Quantization())


def _perturb(model, adapter="default", seed=0):
    """Give an adapter non-zero B matrices, as training would, so that it really changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if f"lora_B.{adapter}." in name:
                param.add_(torch.randn(param.shape, generator=generator).to(param.dtype))


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir, tmp_path_factory):
    """A stage run dir holding a trained-looking SFT adapter and a manifest naming its base model."""
    run = tmp_path_factory.mktemp("sft-run")
    model = apply_lora(_base(tiny_model_dir), LORA)
    _perturb(model, seed=1)
    model.save_pretrained(run / "adapter")
    (run / "manifest.json").write_text(json.dumps({"stage": "sft", "artefacts": {"base_model": "lightalign:tiny"}}))
    return run


def test_resolve_adapter_dir_accepts_a_run_dir_or_its_adapter(sft_run, tmp_path):
    assert resolve_adapter_dir(sft_run) == sft_run / "adapter"
    assert resolve_adapter_dir(sft_run / "adapter", expected_base="lightalign:tiny") == sft_run / "adapter"
    with pytest.raises(ConfigError, match="holds no PEFT adapter"):
        resolve_adapter_dir(tmp_path)
    with pytest.raises(ConfigError, match="was trained on 'lightalign:tiny', not"):
        resolve_adapter_dir(sft_run, expected_base="lightalign:smollm2-135m-instruct")


def test_fresh_policy_is_referenced_against_the_base(tiny_model_dir):
    base_logits = _logits(_base(tiny_model_dir))
    model, kind = load_policy(_base(tiny_model_dir), LORA)
    assert kind == "base"
    model.add_adapter(REFERENCE_ADAPTER, model.peft_config["default"])  # what TRL's DPOTrainer does
    set_up_reference(model, kind)
    assert reference_kind(model) == "base" and REFERENCE_ADAPTER not in model.peft_config
    _perturb(model)  # "training"
    with use_reference(model):
        reference_logits = _logits(model)
    assert torch.allclose(reference_logits, base_logits, atol=1e-5)
    assert not torch.allclose(_logits(model), base_logits, atol=1e-3)


def test_sft_policy_is_referenced_against_a_frozen_copy_of_the_sft_adapter(tiny_model_dir, sft_run):
    base_logits = _logits(_base(tiny_model_dir))
    model, kind = load_policy(_base(tiny_model_dir), LORA, sft_adapter=sft_run / "adapter")
    assert kind == "sft"
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())  # one 4-bit base under both
    sft_logits = _logits(model)
    assert not torch.allclose(sft_logits, base_logits, atol=1e-3)  # the SFT model is not the base

    set_up_reference(model, kind)
    assert reference_kind(model) == "sft"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)  # the reference copy is frozen
    with use_reference(model):
        assert torch.equal(_logits(model), sft_logits)  # step 0: policy == reference

    _perturb(model, seed=2)  # "training" moves the policy only
    with use_reference(model):
        reference_logits = _logits(model)
    assert torch.allclose(reference_logits, sft_logits, atol=1e-5)
    assert not torch.allclose(_logits(model), sft_logits, atol=1e-3)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable  # flags restored
