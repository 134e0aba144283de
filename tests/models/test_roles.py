"""Adapter roles on one shared 4-bit base: the reference rule, switching, and what trains."""

import json

import bitsandbytes as bnb
import pytest
import torch
from peft import PeftModel

from lightalign.models import LoraSettings, Quantization, apply_lora, load_base_model
from lightalign.models.roles import (
    POLICY,
    REFERENCE,
    activate,
    adapters_disabled,
    apply_trainability,
    load_policy,
    load_policy_and_reference,
    reference_kind,
    save_policy,
    set_up_reference,
    use_adapter,
    use_reference,
)

LORA = LoraSettings(r=4, alpha=8, dropout=0.0)
IDS = torch.tensor([[3, 40, 41, 42, 43, 44]])


def _base(tiny_model_dir):
    return load_base_model(str(tiny_model_dir), Quantization())


def _perturb(model, adapter=POLICY, seed=0):
    """Give an adapter non-zero B matrices, as training would, so that it really changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if f"lora_B.{adapter}." in name:
                param.add_(torch.randn(param.shape, generator=generator).to(param.dtype))


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def _trainable(model) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir, tmp_path_factory):
    """A stage run dir holding a trained-looking SFT adapter and a manifest naming its base model."""
    run = tmp_path_factory.mktemp("sft-run")
    model = apply_lora(_base(tiny_model_dir), LORA)
    _perturb(model, seed=1)
    model.save_pretrained(run / "adapter")
    (run / "manifest.json").write_text(json.dumps({"stage": "sft", "artefacts": {"base_model": "lightalign:tiny"}}))
    return run


@pytest.fixture(scope="module")
def sft_logits(tiny_model_dir, sft_run):
    """What the SFT model (base + its adapter, loaded for inference) answers: the reference's log-probs."""
    return _logits(PeftModel.from_pretrained(_base(tiny_model_dir), sft_run / "adapter"))


def test_fresh_policy_is_referenced_against_the_bare_base(tiny_model_dir):
    base_logits = _logits(_base(tiny_model_dir))
    model, kind = load_policy(_base(tiny_model_dir), LORA)
    assert kind == "base"
    model.add_adapter(REFERENCE, model.peft_config[POLICY])  # what TRL's DPOTrainer does
    set_up_reference(model, kind)
    assert reference_kind(model) == "base" and REFERENCE not in model.peft_config
    _perturb(model)  # "training"
    with use_reference(model):
        assert adapters_disabled(model)
        reference_logits = _logits(model)
    assert not adapters_disabled(model)
    assert torch.equal(reference_logits, base_logits)  # adapters off: exactly the bare base
    assert not torch.allclose(_logits(model), base_logits, atol=1e-3)
    assert _trainable(model) and all(f".{POLICY}." in name for name in _trainable(model))  # disable_adapter froze all


def test_sft_policy_is_referenced_against_a_frozen_copy_of_the_sft_adapter(tiny_model_dir, sft_run, sft_logits):
    base_logits = _logits(_base(tiny_model_dir))
    model, kind = load_policy(_base(tiny_model_dir), LORA, sft_adapter=sft_run / "adapter")
    assert kind == "sft"
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())  # one 4-bit base under both
    assert not torch.allclose(_logits(model), base_logits, atol=1e-3)  # the SFT model is not the base

    set_up_reference(model, kind)
    assert reference_kind(model) == "sft"
    trainable = _trainable(model)
    assert trainable and all(f".{POLICY}." in name for name in trainable)  # only the policy adapter trains
    with use_reference(model):
        assert model.active_adapter == REFERENCE
        assert torch.equal(_logits(model), sft_logits)  # step 0: policy == reference == the SFT model

    _perturb(model, seed=2)  # "training" moves the policy only
    with use_reference(model):
        assert torch.equal(_logits(model), sft_logits)
    assert model.active_adapter == POLICY
    assert not torch.allclose(_logits(model), sft_logits, atol=1e-3)
    assert _trainable(model) == trainable  # set_adapter made "ref" trainable inside the block: undone


def test_load_policy_and_reference_is_one_call_for_either_reference(tiny_model_dir, sft_run, sft_logits):
    base_logits = _logits(_base(tiny_model_dir))
    from_sft = load_policy_and_reference(_base(tiny_model_dir), LORA, sft_adapter=sft_run / "adapter")
    from_sft_against_base = load_policy_and_reference(_base(tiny_model_dir), LORA, sft_adapter=sft_run / "adapter",
                                                      reference="base")
    fresh = load_policy_and_reference(_base(tiny_model_dir), LORA)
    for model, expected in ((from_sft, sft_logits), (from_sft_against_base, base_logits), (fresh, base_logits)):
        _perturb(model, seed=3)
        with use_reference(model):
            assert torch.equal(_logits(model), expected)
        assert _trainable(model) and all(f".{POLICY}." in name for name in _trainable(model))
    with pytest.raises(ValueError, match="needs an SFT adapter"):
        load_policy_and_reference(_base(tiny_model_dir), LORA, reference="sft")


def test_adapters_disabled_reads_what_peft_does(tiny_model_dir):
    # adapters_disabled reads PEFT's public per-layer flag: this fails if PEFT stops setting it in disable_adapter().
    model = load_policy_and_reference(_base(tiny_model_dir), LORA)
    assert not adapters_disabled(model)
    with model.disable_adapter():
        assert adapters_disabled(model)
    assert not adapters_disabled(model)


def test_use_adapter_inside_disabled_adapters_runs_the_adapter_and_puts_everything_back(tiny_model_dir, sft_run):
    model = load_policy_and_reference(_base(tiny_model_dir), LORA, sft_adapter=sft_run / "adapter")
    model.add_adapter("reward", model.peft_config[POLICY])
    _perturb(model, adapter="reward", seed=4)
    activate(model, "reward")
    reward_logits = _logits(model)
    activate(model, POLICY)
    trainable = _trainable(model)
    with model.disable_adapter():
        bare = _logits(model)
        with use_adapter(model, "reward"):
            assert torch.equal(_logits(model), reward_logits)  # the adapter applies although adapters were off
        assert adapters_disabled(model) and torch.equal(_logits(model), bare)  # ... and are off again
    assert model.active_adapter == POLICY and _trainable(model) == trainable


@pytest.mark.parametrize("sft", [True, False], ids=["reference-adapter", "reference-base"])
def test_trainability_rule_policy_and_value_train_everything_else_is_frozen(tiny_model_dir, sft_run, sft):
    model = load_policy_and_reference(_base(tiny_model_dir), LORA, sft_adapter=sft_run / "adapter" if sft else None)
    for name in ("value", "reward"):
        model.add_adapter(name, model.peft_config[POLICY])

    def training_adapters() -> set[str]:
        return {name.split(".lora_")[1].split(".")[1] for name in _trainable(model)}

    model.set_adapter("reward")  # PEFT: the active adapter trains, every other is frozen
    apply_trainability(model)
    assert training_adapters() == {POLICY, "value"}
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n)  # the base stays frozen
    # PEFT's set_adapter and disable_adapter rewrite the flags on the way out of each switch: the rule is re-applied
    for switch in (use_reference(model), use_adapter(model, "reward")):
        with switch:
            pass
        assert training_adapters() == {POLICY, "value"}
    activate(model, "value")
    assert training_adapters() == {POLICY, "value"}


def test_save_policy_writes_the_policy_adapter_alone(tiny_model_dir, sft_run, sft_logits, tmp_path):
    model = load_policy_and_reference(_base(tiny_model_dir), LORA, sft_adapter=sft_run / "adapter")
    _perturb(model, seed=5)
    trained = _logits(model)
    folder = save_policy(model, tmp_path / "adapter")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json",
                                                       "adapter_model.safetensors"]
    assert torch.equal(_logits(PeftModel.from_pretrained(_base(tiny_model_dir), folder)), trained)
