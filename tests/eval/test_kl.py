"""ReferenceKL scores the policy's answers under the reference that use_reference picks (the frozen SFT adapter)."""

from __future__ import annotations

import json

import torch

from lightalign.data import load_prompt_examples
from lightalign.eval import EvalContext
from lightalign.eval.kl import ReferenceKL
from lightalign.models import LoraSettings, Quantization, apply_lora, load_base_model
from lightalign.models.roles import load_policy, set_up_reference


def test_kl_to_sft_is_zero_where_training_starts_and_leaves_the_policy_as_found(tiny_model_dir, tiny_tokenizer,
                                                                                 tmp_path):
    sft = apply_lora(load_base_model(str(tiny_model_dir), Quantization()), LoraSettings(r=4, alpha=8))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # an SFT adapter far from the base: a KL against the base would be far from 0
        for name, param in sft.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    sft.save_pretrained(tmp_path / "adapter")
    (tmp_path / "manifest.json").write_text(json.dumps({"stage": "sft", "artefacts": {"adapter": "adapter"}}))
    policy, kind = load_policy(load_base_model(str(tiny_model_dir), Quantization()), LoraSettings(),
                               sft_adapter=tmp_path / "adapter")
    set_up_reference(policy, kind)
    policy.train()
    trainable = {name for name, param in policy.named_parameters() if param.requires_grad}

    hook = ReferenceKL(load_prompt_examples("demo:prompts", limit=4), max_new_tokens=6)
    metrics = hook(EvalContext(policy, tiny_tokenizer, tmp_path))

    assert set(metrics) == {"kl_to_sft", "kl_to_sft_per_token"}
    assert metrics["kl_to_sft"] == 0.0 and metrics["kl_to_sft_per_token"] == 0.0  # policy == SFT model at start
    assert policy.training and policy.active_adapter == "default"
    assert {name for name, param in policy.named_parameters() if param.requires_grad} == trainable
