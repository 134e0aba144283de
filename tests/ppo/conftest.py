"""A tiny random Llama with a saved SFT adapter and a saved reward-model adapter, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

PAD_ID = 0
EOS_ID = 2


def tiny_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=PAD_ID,
        bos_token_id=1,
        eos_token_id=EOS_ID,
    )


@pytest.fixture(scope="session")
def tiny_ppo_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``base`` (HF folder), ``sft`` (CAUSAL_LM LoRA) and ``rm`` (SEQ_CLS LoRA with its score head)."""
    root = tmp_path_factory.mktemp("tiny_ppo")
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_config()).save_pretrained(root / "base")

    # init_lora_weights=False: non-zero B matrices, so each adapter really changes the outputs and a
    # test can tell the roles apart. Dropout > 0 to check that the roles switch it off.
    torch.manual_seed(1)
    sft = get_peft_model(
        LlamaForCausalLM.from_pretrained(root / "base"),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3, target_modules="all-linear", init_lora_weights=False),
    )
    sft.save_pretrained(root / "sft")

    torch.manual_seed(2)
    rm = get_peft_model(
        LlamaForSequenceClassification.from_pretrained(root / "base", num_labels=1),
        LoraConfig(
            r=4,
            target_modules="all-linear",
            task_type="SEQ_CLS",
            modules_to_save=["score"],
            init_lora_weights=False,
        ),
    )
    rm.save_pretrained(root / "rm")
    return {"base": root / "base", "sft": root / "sft", "rm": root / "rm"}


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, int]:
    """Two left-padded prompts (width 5) followed by right-padded responses (width 4, one ends in EOS).

    Returns ``(input_ids, attention_mask, response_start)``.
    """
    prompts = torch.tensor([[PAD_ID, PAD_ID, 5, 6, 7], [9, 10, 11, 12, 13]])
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    responses = torch.tensor([[20, EOS_ID, PAD_ID, PAD_ID], [30, 31, 32, 33]])
    response_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    return torch.cat([prompts, responses], 1), torch.cat([prompt_mask, response_mask], 1), prompts.shape[1]


def save_stage_adapters(root: Path, base_dir: Path, model_name: str) -> dict[str, Path]:
    """An SFT adapter folder and a reward stage's run dir (adapter/ + config.yaml + manifest.json) on ``base_dir``.

    Random adapters (``init_lora_weights=False``), no training: the SFT model differs from the base, and the
    reward model gives every answer some score, which is all the PPO machinery needs.
    """
    import json

    torch.manual_seed(3)
    sft = get_peft_model(
        LlamaForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
    )
    sft.save_pretrained(root / "sft")
    torch.manual_seed(4)
    rm = get_peft_model(
        LlamaForSequenceClassification.from_pretrained(base_dir, num_labels=1),
        LoraConfig(r=4, target_modules="all-linear", task_type="SEQ_CLS", modules_to_save=["score"],
                   init_lora_weights=False),
    )
    rm.save_pretrained(root / "reward" / "adapter")
    (root / "reward" / "config.yaml").write_text(
        f"stage: reward\nmodel:\n  name_or_path: {model_name}\ndata:\n  max_length: 256\n", encoding="utf-8"
    )
    manifest = {"stage": "reward", "artefacts": {"adapter": "adapter", "base_model": model_name}, "config_hash": "x"}
    (root / "reward" / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return {"sft": root / "sft", "reward": root / "reward"}


@pytest.fixture(scope="session")
def tiny_random_stages(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """``sft`` (adapter folder) and ``reward`` (a reward stage's run dir) for ``lightalign:tiny-random``,
    which, unlike the bare tiny Llama above, has a tokenizer and a chat template: what rollouts need."""
    return save_stage_adapters(tmp_path_factory.mktemp("tiny_stages"), tiny_model_dir, "lightalign:tiny-random")
