"""Where a reward model reads its score: one rule for reward training, ``RewardModel.score`` and PPO.

The reward stage trains through TRL's ``RewardTrainer`` on ``AutoModelForSequenceClassification``, whose
pooling reads the hidden state of the **rightmost token that is not** ``config.pad_token_id`` (it ignores
the attention mask). lightalign keeps that rule rather than replacing the model's forward: reward models
already trained stay valid, and there is nothing to keep in sync with transformers but one pad id. So:

* :func:`score_pad_token_id` is the pad id the score head pools with: the config's, else EOS (what
  :func:`~lightalign.models.loading.load_base_model` sets for ``head="score"``). PPO's causal-LM config
  of the same checkpoint gives the same id, also when it has no pad id.
* :func:`scored_positions` is the rule, for code that applies the head itself (PPO's shared base).
* :func:`score_head_inputs` rewrites padding to that pad id before a sequence-classification forward:
  a collator may pad with the tokenizer's pad id (Qwen2.5: ``<|endoftext|>``, while the head pools with
  EOS ``<|im_end|>``), and the head would then read a pad token of every shorter row.

Consequence to know: when the pad id is EOS and a rendered exchange ends with EOS (a chat template with no
newline after its end-of-turn token, Llama 3's ``<|eot_id|>``), the score is read at the token *before*
the trailing EOS, in training and at every use alike.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PretrainedConfig


def score_pad_token_id(config: PretrainedConfig) -> int:
    """The pad id a sequence-classification head pools with: ``pad_token_id``, else the (first) EOS id.

    Raises:
        ValueError: the config has neither.
    """
    text = config.get_text_config()
    pad = text.pad_token_id if text.pad_token_id is not None else text.eos_token_id
    if isinstance(pad, list | tuple):
        pad = pad[0] if pad else None
    if pad is None:
        raise ValueError("the model config has no pad_token_id and no eos_token_id: cannot locate its score")
    return int(pad)


def scored_positions(input_ids: Tensor, attention_mask: Tensor, pad_token_id: int) -> Tensor:
    """The column a reward model reads its score at, ``[B]``: the rightmost attended token that is not the pad id.

    Equal to transformers' sequence-classification pooling on inputs from :func:`score_head_inputs`.

    Example:
        >>> ids = torch.tensor([[5, 6, 2, 0], [5, 2, 2, 2]])   # pad 2 (= EOS), padding 0 in row 0
        >>> scored_positions(ids, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]), pad_token_id=2)
        tensor([1, 0])
    """
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)
    keep = attention_mask.bool() & (input_ids != pad_token_id)
    return (columns * keep.long()).argmax(dim=1)


def score_head_inputs(input_ids: Tensor, attention_mask: Tensor, config: PretrainedConfig) -> Tensor:
    """``input_ids`` with every padded position (mask 0) set to :func:`score_pad_token_id`, so the model's
    own pooling reads :func:`scored_positions`."""
    return input_ids.masked_fill(attention_mask == 0, score_pad_token_id(config))

