"""LoRA adapters on a (possibly 4-bit) base: QLoRA is LoRA plus a quantisation option, one code path."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model, prepare_model_for_kbit_training
from transformers import PreTrainedModel

from lightalign.config.schema import LoraSettings
from lightalign.errors import ConfigError
from lightalign.models.frozen_4bit import keep_dequantized_for_backward
from lightalign.models.lora_dropout import fold_lora_dropout

# Non-reentrant checkpointing (transformers' own default): frozen inputs need no requires_grad hack, and PPO's
# per-role backward passes recompute under the adapter that is active then.
CHECKPOINTING = {"use_reentrant": False}


def is_quantized(model: PreTrainedModel) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def prepare_for_training(model: PreTrainedModel, *, gradient_checkpointing: bool = False) -> PreTrainedModel:
    """Ready a base for adapter training: a 4-bit base through PEFT's ``prepare_model_for_kbit_training`` (frozen,
    its norms and embeddings in fp32), gradient checkpointing on if asked. Every trainable adapter starts here.

    With checkpointing, a 4-bit base's layers keep the weight they dequantise in the (re)computed forward for
    their backward (:mod:`lightalign.models.frozen_4bit`): one dequantisation fewer a step, one layer's dense
    weights at a time."""
    if is_quantized(model):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs=CHECKPOINTING)
        if gradient_checkpointing:
            keep_dequantized_for_backward(model)
        return model
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING)
    return model


def build_lora_config(
    settings: LoraSettings, *, task_type: str = "CAUSAL_LM", modules_to_save: list[str] | None = None
) -> LoraConfig:
    """PEFT's ``LoraConfig`` for our settings (``["all-linear"]`` becomes PEFT's ``"all-linear"``)."""
    targets: str | list[str] = settings.target_modules
    if list(targets) == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        task_type=TaskType[task_type],
        modules_to_save=modules_to_save,
    )


def apply_lora(
    model: PreTrainedModel,
    settings: LoraSettings,
    *,
    task_type: str = "CAUSAL_LM",
    modules_to_save: list[str] | None = None,
    gradient_checkpointing: bool = False,
    adapter_name: str = "default",
) -> PeftModel:
    """Wrap ``model`` with a fresh trainable LoRA adapter; the base stays frozen.

    For a reward/value model pass ``task_type="SEQ_CLS", modules_to_save=["score"]``: the scalar head
    is then trained and saved with the adapter (peers that forget this save a useless reward model).
    """
    model = prepare_for_training(model, gradient_checkpointing=gradient_checkpointing)
    config = build_lora_config(settings, task_type=task_type, modules_to_save=modules_to_save)
    peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    upcast_trainable(peft_model)
    fold_lora_dropout(peft_model)  # same values, a fraction of the activation memory
    return peft_model


def apply_lora_from(
    model: PreTrainedModel,
    adapter_dir: str | Path,
    *,
    task_type: str = "CAUSAL_LM",
    modules_to_save: list[str] | None = None,
    gradient_checkpointing: bool = False,
) -> PeftModel:
    """A trainable adapter of the saved adapter's shape whose LoRA weights start as the saved ones.

    InstructGPT starts its reward model from the SFT model: here the reward model (``task_type="SEQ_CLS"``,
    a new ``score`` head in ``modules_to_save``) gets the SFT adapter's rank, alpha and target modules and its
    LoRA weights, so it starts as the SFT model plus an untrained head. The two models share their body's
    module names, so every saved LoRA weight has a place; one that does not is an error, not a silent skip.

    ``adapter_dir`` is a stage's adapter folder (:attr:`lightalign.rundir.StageRun.adapter_dir`).

    Raises:
        ConfigError: if the saved weights do not fit ``model``.
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    saved = LoraConfig.from_pretrained(str(adapter_dir))
    targets = saved.target_modules
    settings = LoraSettings(
        r=saved.r, alpha=saved.lora_alpha, dropout=saved.lora_dropout,
        target_modules=[targets] if isinstance(targets, str) else sorted(targets),
    )
    peft_model = apply_lora(model, settings, task_type=task_type, modules_to_save=modules_to_save,
                            gradient_checkpointing=gradient_checkpointing)
    weights = load_peft_weights(str(adapter_dir), device="cpu")
    state = get_peft_model_state_dict(peft_model)  # also holds the new head (modules_to_save): kept as it is
    unexpected = sorted(set(weights) - set(state))
    if unexpected:
        raise ConfigError(f"{adapter_dir}: {len(unexpected)} of its weights fit no module of the model "
                                 f"(e.g. {unexpected[0]}); was it trained on another base?")
    set_peft_model_state_dict(peft_model, {**state, **weights})
    upcast_trainable(peft_model)
    return peft_model


def upcast_trainable(model: PreTrainedModel) -> None:
    """Keep trainable (adapter) weights in fp32.

    On a 4-bit base PEFT creates LoRA weights in the compute dtype (bf16); AdamW updates on bf16 weights
    round small steps away, and a resumed run (PEFT loads adapters in fp32) would diverge from an
    uninterrupted one.
    """
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def load_adapter_model(
    model: PreTrainedModel, adapter_dir: str | Path, *, trainable: bool = False, adapter_name: str = "default"
) -> PeftModel:
    """Attach a saved PEFT adapter (a stage's: :attr:`lightalign.rundir.StageRun.adapter_dir`) to a base model.

    To train it further, pass a base that went through :func:`prepare_for_training` and ``trainable=True``.
    """
    peft_model = PeftModel.from_pretrained(model, adapter_dir, adapter_name=adapter_name, is_trainable=trainable)
    upcast_trainable(peft_model)
    fold_lora_dropout(peft_model)
    return peft_model
