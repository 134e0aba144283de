"""TRL's preference trainers, fed by the shared data layer instead of TRL's own tokenisation.

- :class:`RankedRewardTrainer`: ``RewardTrainer`` with InstructGPT's loss over ranked groups
  (:func:`ranking_loss`): a batch element is one prompt with all its answers.
- :class:`TokenizedDPOTrainer`: ``DPOTrainer`` on rows already tokenised by
  :func:`lightalign.data.tokenize.tokenize_preference_pairs`.

Both reach into TRL's private API; every private name they use is in :class:`TrlInternals`, and
``tests/test_trainers.py`` checks those names on the installed TRL, so an upgrade that changes one fails there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl import DPOTrainer, RewardTrainer

from lightalign.models.adapters import upcast_trainable
from lightalign.models.score_position import score_head_inputs


def ranking_loss(
    rewards: torch.Tensor, chosen_index: torch.Tensor, rejected_index: torch.Tensor, pair_weight: torch.Tensor
) -> torch.Tensor:
    """InstructGPT's reward-model loss: ``-Σ_pairs w · log σ(r_chosen - r_rejected)``.

    ``rewards`` holds one score per answer in the batch; the pairs index into it. With the weights of
    :func:`lightalign.data.collators.pad_ranked_groups` this is the mean over prompts of the mean over each
    prompt's pairs (``-1/C(K,2) · E[log σ(r_w - r_l)]`` in the paper's notation).

    Example: two answers scored 1.0 and 0.0, one pair of weight 1 → ``-log σ(1) = 0.3133``.
    """
    margins = rewards[chosen_index] - rewards[rejected_index]
    return -(pair_weight.to(margins.dtype) * F.logsigmoid(margins)).sum()


class TrlInternals:
    """What our trainers change in TRL 1.16's ``RewardTrainer``/``DPOTrainer``, through its private API (mix in first).

    - ``_prepare_dataset(dataset, processing_class, args, dataset_name)``, which TRL's ``__init__`` calls to
      tokenise: skipped, the rows arrive tokenised by :mod:`lightalign.data.tokenize`;
    - ``_metrics[mode]`` (lists TRL averages into each logged row) and ``_total_train_tokens`` (its
      ``num_tokens``): written by :meth:`record_metrics`, for a loss computed by us.

    On a 4-bit base TRL casts every trainable parameter to bf16; they are put back to fp32 as the SFT recipe
    does (exact resume). A reward model's score head needs it most: a bf16 Linear fed fp32 hidden states fails.
    """

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 (the TRL trainer's signature)
        super().__init__(*args, **kwargs)
        upcast_trainable(self.model)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # noqa: ANN001, ANN202 (TRL API)
        return dataset

    def record_metrics(self, mode: str, values: dict[str, float], tokens: int) -> None:
        """Add one step's ``values`` to TRL's logged averages, and ``tokens`` to its count (``mode="train"``)."""
        metrics = self._metrics[mode]
        for key, value in values.items():
            metrics[key].append(value)
        if mode == "train":
            self._total_train_tokens += tokens
        metrics["num_tokens"] = [self._total_train_tokens]


class RankedRewardTrainer(TrlInternals, RewardTrainer):
    """``RewardTrainer`` whose batches are ranked groups (:class:`~lightalign.data.collators.RankedGroupCollator`).

    Each answer is scored once per step however many pairs it is in (K forward passes for a ranking of K
    instead of K·(K-1)), and a prompt's pairs share one gradient step, which InstructGPT found to stop the
    reward model overfitting after one epoch. Rows come from :func:`lightalign.data.tokenize.tokenize_reward_groups`.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        mode = "train" if self.model.training else "eval"
        # Padding rewritten to the id the score head pools with: the collator pads with the tokenizer's pad id,
        # which may differ (lightalign.models.score_position), and the head would then score a pad token.
        input_ids = score_head_inputs(inputs["input_ids"], inputs["attention_mask"], self.model.config)
        outputs = model(input_ids=input_ids, attention_mask=inputs["attention_mask"], use_cache=False)
        rewards = outputs.logits.squeeze(-1)
        loss = ranking_loss(rewards, inputs["chosen_index"], inputs["rejected_index"], inputs["pair_weight"])
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean(rewards**2)
        with torch.no_grad():
            margins = rewards[inputs["chosen_index"]] - rewards[inputs["rejected_index"]]
            self.record_metrics(mode, {"accuracy": (margins > 0).float().mean().item(),
                                       "margin": margins.mean().item(), "mean_reward": rewards.mean().item()},
                                tokens=int(inputs["attention_mask"].sum()))
        return (loss, outputs) if return_outputs else loss


class TokenizedDPOTrainer(TrlInternals, DPOTrainer):
    """``DPOTrainer`` on rows with ``prompt_ids``, ``chosen_ids`` and ``rejected_ids``, from
    :func:`lightalign.data.tokenize.tokenize_preference_pairs`."""
