"""A model's train/eval mode, switched for a block and put back after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


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
