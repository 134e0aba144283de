"""LoRA adapters: a reward model's adapter started from a saved (SFT) adapter's weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from lightalign.errors import ConfigError
from lightalign.models import LoraSettings, Quantization, apply_lora, load_base_model
from lightalign.models.adapters import apply_lora_from

TINY = "lightalign:tiny-random"


def _saved_sft_adapter(tmp_path):
    """A causal-LM adapter (r=4 on two projections) whose LoRA weights are all non-zero, saved."""
    base = load_base_model(TINY, Quantization(), compute_dtype=torch.float32)
    model = apply_lora(base, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param))
    model.save_pretrained(tmp_path / "sft")
    return tmp_path / "sft"


def test_reward_adapter_starts_from_the_sft_adapters_weights(tmp_path):
    sft = _saved_sft_adapter(tmp_path)
    saved = load_file(sft / "adapter_model.safetensors")
    scorer = load_base_model(TINY, Quantization(), compute_dtype=torch.float32, head="score")
    reward = apply_lora_from(scorer, sft, task_type="SEQ_CLS", modules_to_save=["score"])

    lora = {name: p for name, p in reward.named_parameters() if "lora_" in name}
    assert len(lora) == len(saved) > 0  # the SFT adapter's shape (r=4, q/v only), not lora.* defaults
    for key, value in saved.items():
        name = key.replace(".weight", ".default.weight")
        assert torch.equal(lora[name].detach().float(), value.float()), key
        assert lora[name].requires_grad
    assert any("score" in n and p.requires_grad for n, p in reward.named_parameters())  # the new head trains


def test_an_adapter_whose_weights_fit_no_module_is_a_config_error(tmp_path):
    sft = _saved_sft_adapter(tmp_path)
    weights = load_file(sft / "adapter_model.safetensors")
    key = next(iter(weights))
    weights[key.replace("layers.0.", "layers.99.")] = weights[key].clone()  # a layer this base does not have
    save_file(weights, sft / "adapter_model.safetensors")
    scorer = load_base_model(TINY, Quantization(), compute_dtype=torch.float32, head="score")
    with pytest.raises(ConfigError, match="1 of its weights fit no module of the model"):
        apply_lora_from(scorer, sft, task_type="SEQ_CLS", modules_to_save=["score"])
