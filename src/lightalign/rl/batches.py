"""Rows of a batch of sampled answers, cut to what they need: how PPO and GRPO form their micro-batches."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Self, TypeVar

from torch import Tensor


@dataclass
class AnswerBatch:
    """Sampled answers after their prompts: ``input_ids``/``attention_mask`` ``[B, P + T]`` (left-padded prompts,
    then right-padded answers from column ``response_start``) and ``mask`` ``[B, T]`` (1 for real answer tokens).

    Stages extend it with what they optimise on (PPO's values and returns, GRPO's advantages per answer); any
    added field is per answer: ``[B, T]``, ``[B]``, a list, or None.
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_start: int
    mask: Tensor

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def responses(self) -> Tensor:
        return self.input_ids[:, self.response_start :]

    def select(self, rows: Tensor) -> Self:
        """The answers ``rows`` only, cut to their longest answer (:func:`select_rows`)."""
        return select_rows(self, rows)


Batch = TypeVar("Batch", bound=AnswerBatch)


def select_rows(batch: Batch, rows: Tensor) -> Batch:
    """The answers ``rows`` of ``batch`` only, cut to their longest answer (less compute per micro-batch).

    ``[B, P + T]`` fields keep the prompt columns and the answer columns up to that length, ``[B, T]`` fields
    the answer columns, ``[B]`` fields and lists their rows; ``None`` and every other value stay as they are.
    """
    # at least one column: a micro-batch whose every answer the loss leaves out still runs (and adds 0)
    width = max(1, int(batch.mask[rows].sum(1).max().item()))
    columns = batch.response_start + width
    picked: dict[str, Any] = {}
    for item in fields(batch):  # type: ignore[arg-type]
        value = getattr(batch, item.name)
        if item.name in ("input_ids", "attention_mask"):
            value = value[rows, :columns]
        elif isinstance(value, Tensor) and value.dim() == 2:
            value = value[rows, :width]
        elif isinstance(value, Tensor):
            value = value[rows]
        elif isinstance(value, list):
            value = [value[i] for i in rows.tolist()]
        picked[item.name] = value
    return replace(batch, **picked)
