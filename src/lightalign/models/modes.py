"""A model's train/eval mode, switched for a block and put back after it; dropout switched off for good."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from transformers import PretrainedConfig


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``model`` in eval mode (no dropout), then restore the mode it was in, even on error.

    Evaluation and scoring run mid-training (eval hooks, a reward model shared with the policy): leaving the
    model in eval mode afterwards would silently turn dropout off for the rest of training.

    Example:
        >>> model = nn.Dropout().train()
        >>> with eval_mode(model):
        ...     model.training
        False
        >>> model.training
        True
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def disable_dropout(model: nn.Module) -> None:
    """Switch every dropout off: PPO and GRPO need the same log-probs in the update as when they sampled.

    ``nn.Dropout`` modules (LoRA's included) get ``p = 0``; attention dropout, which Llama, Qwen2 and most
    transformers models apply functionally in training mode from a float ``attention_dropout`` attribute
    of each attention layer (copied from ``config.attention_dropout``), is set to 0 there and in the configs.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig) and getattr(config, "attention_dropout", None):
            config.attention_dropout = 0.0
