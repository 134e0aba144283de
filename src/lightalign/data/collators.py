"""Every collator of every stage, in one module. Each turns a list of tokenised rows into tensors.

``-100`` in ``labels`` means "no loss". Padding never decides the labels: a row's labels come from
tokenisation, so an EOS equal to the pad token keeps its label (the model learns to stop).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lightalign.data.tokenize import IGNORE_INDEX


def _pad(
    rows: Sequence[Sequence[int]], value: int, *, left: bool = False, multiple_of: int | None = None
) -> torch.Tensor:
    length = max(len(row) for row in rows)
    if multiple_of:
        length = -(-length // multiple_of) * multiple_of
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if not row:
            continue
        if left:
            out[i, length - len(row) :] = torch.tensor(row, dtype=torch.long)
        else:
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def pad_lm(
    rows: Sequence[dict], pad_token_id: int, *, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad language-modelling rows.

    Example (pad 0, which is also EOS=0)::

        pad_lm([{"input_ids": [5, 6, 0], "labels": [-100, 6, 0]},
                {"input_ids": [7], "labels": [7]}], pad_token_id=0)
        -> input_ids      [[5, 6, 0], [7, 0, 0]]
           attention_mask [[1, 1, 1], [1, 0, 0]]
           labels         [[-100, 6, 0], [7, -100, -100]]   # the first row's EOS keeps its label
    """
    input_ids = _pad([r["input_ids"] for r in rows], pad_token_id, multiple_of=pad_to_multiple_of)
    labels = _pad([r["labels"] for r in rows], IGNORE_INDEX, multiple_of=pad_to_multiple_of)
    attention_mask = _pad([[1] * len(r["input_ids"]) for r in rows], 0, multiple_of=pad_to_multiple_of)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pack_lm(rows: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Padding-free: concatenate rows into one sequence; ``position_ids`` restart at every row.

    Attention does not cross row boundaries: transformers detects the restarts in ``position_ids`` and
    builds a block-diagonal mask (sdpa/eager) or uses varlen kernels (flash-attention). The first label
    of each row is ``-100`` so no row is trained to predict the next row's first token.

    Example::

        pack_lm([{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [7], "labels": [7]}])
        -> input_ids [[5, 6, 7]], position_ids [[0, 1, 0]], labels [[-100, 6, -100]]
    """
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for row in rows:
        ids += row["input_ids"]
        # the first token of a row is never predicted (it would be predicted from the previous row)
        labels += [IGNORE_INDEX] + list(row["labels"][1:])
        positions += list(range(len(row["input_ids"])))
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        # transformers only builds the block-diagonal mask when no KV cache is created
        "use_cache": False,
    }


def pad_prompts(prompts: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompt ids for generation (new tokens follow every prompt at the same position).

    Example::

        pad_prompts([[5, 6], [7]], pad_token_id=0)
        -> input_ids [[5, 6], [0, 7]], attention_mask [[1, 1], [0, 1]]
    """
    input_ids = _pad(prompts, pad_token_id, left=True)
    attention_mask = _pad([[1] * len(p) for p in prompts], 0, left=True)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def pad_preference(rows: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Stack chosen then rejected sequences into one right-padded batch of ``2·B`` rows.

    Rows hold ``chosen_input_ids`` and ``rejected_input_ids`` (and optional ``*_labels``); row ``i`` and
    ``i + B`` are a pair, so one forward pass scores both answers.

    Example::

        pad_preference([{"chosen_input_ids": [5, 6], "rejected_input_ids": [5]}], pad_token_id=0)
        -> input_ids [[5, 6], [5, 0]], attention_mask [[1, 1], [1, 0]]
    """
    sequences = [r["chosen_input_ids"] for r in rows] + [r["rejected_input_ids"] for r in rows]
    batch = {
        "input_ids": _pad(sequences, pad_token_id),
        "attention_mask": _pad([[1] * len(s) for s in sequences], 0),
    }
    if "chosen_labels" in rows[0]:
        batch["labels"] = _pad([r["chosen_labels"] for r in rows] + [r["rejected_labels"] for r in rows], IGNORE_INDEX)
    if "weight" in rows[0]:
        batch["weight"] = torch.tensor([float(r["weight"]) for r in rows])
    return batch


def pad_sequences(sequences: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad whole sequences for scoring (a reward model reads its score at the last real token).

    Example::

        pad_sequences([[5, 6], [7]], pad_token_id=0)
        -> input_ids [[5, 6], [7, 0]], attention_mask [[1, 1], [1, 0]]
    """
    return {"input_ids": _pad(sequences, pad_token_id), "attention_mask": _pad([[1] * len(s) for s in sequences], 0)}


def pad_ranked_groups(rows: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Flatten groups of ranked answers (InstructGPT: one prompt's K answers = one batch element) into one batch.

    Each row holds its answers' ``input_ids`` and its pairs as indices into them; the pair indices become
    indices into the flat batch, and ``pair_weight`` is the row's pair weight divided by the number of rows,
    so that ``-(pair_weight * logsigmoid(r[chosen] - r[rejected])).sum()`` is the mean over groups of the
    mean over each group's pairs.

    Example (a ranking of 3 answers and a lone pair)::

        pad_ranked_groups([
            {"input_ids": [[5, 6], [5], [5, 7, 8]], "chosen_index": [0, 0, 1], "rejected_index": [1, 2, 2],
             "pair_weight": [1/3, 1/3, 1/3]},
            {"input_ids": [[9], [9, 9]], "chosen_index": [0], "rejected_index": [1], "pair_weight": [1.0]},
        ], pad_token_id=0)
        -> input_ids [[5, 6, 0], [5, 0, 0], [5, 7, 8], [9, 0, 0], [9, 9, 0]]   (+ attention_mask)
           chosen_index [0, 0, 1, 3], rejected_index [1, 2, 2, 4], pair_weight [1/6, 1/6, 1/6, 1/2]
    """
    sequences: list[Sequence[int]] = []
    chosen: list[int] = []
    rejected: list[int] = []
    weights: list[float] = []
    for row in rows:
        offset = len(sequences)
        sequences += row["input_ids"]
        chosen += [offset + i for i in row["chosen_index"]]
        rejected += [offset + i for i in row["rejected_index"]]
        weights += [float(w) / len(rows) for w in row["pair_weight"]]
    batch = pad_sequences(sequences, pad_token_id)
    batch["chosen_index"] = torch.tensor(chosen, dtype=torch.long)
    batch["rejected_index"] = torch.tensor(rejected, dtype=torch.long)
    batch["pair_weight"] = torch.tensor(weights, dtype=torch.float32)
    return batch


@dataclass
class RankedGroupCollator:
    """The reward stage's collator: :func:`pad_ranked_groups` as a callable for the trainer."""

    pad_token_id: int

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        return pad_ranked_groups(rows, self.pad_token_id)


@dataclass
class LMCollator:
    """The SFT/pretrain collator handed to the trainer: padded batches, or one packed row."""

    pad_token_id: int
    padding_free: bool = False
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        rows = [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in rows]
        if self.padding_free:
            return pack_lm(rows)
        return pad_lm(rows, self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of)
