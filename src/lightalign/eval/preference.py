"""Eval hooks of the preference stages (the one hook interface: ``hook(ctx) -> dict[str, float]``).

- :class:`PairwiseAccuracy`: a reward model on held-out pairs;
- :class:`ImplicitRewardAccuracy`: DPO's implicit reward ``β·(log π(y|x) - log π_ref(y|x))`` on held-out pairs;
- :class:`ReferenceWinRate`: the policy's answers against its reference's (the SFT model) under each scorer
  (reward model, gold judge), for DPO and PPO.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from lightalign.data.collators import pad_preference
from lightalign.data.formats import prompt_text
from lightalign.data.preference import prompt_key
from lightalign.data.tokenize import IGNORE_INDEX, encode_exchange, keep_last
from lightalign.data.types import PreferencePair, PromptOnly
from lightalign.eval.generation import generate_answers
from lightalign.eval.hooks import EvalContext, ScoreFn
from lightalign.models.reference import use_reference
from lightalign.reward_model import score_sequences


def _mean(values: Sequence[float]) -> float:
    return sum(values) / max(len(values), 1)


@dataclass
class PairwiseAccuracy:
    """Score held-out pairs with the reward model being trained: ``pairwise_accuracy`` (chosen scored above
    rejected), ``mean_margin`` (mean chosen - rejected score) and ``mean_score``.

    Each distinct (prompt, answer) is scored once, so a ranking's pairs share their answers' scores.
    """

    pairs: list[PreferencePair]
    max_length: int = 512
    batch_size: int = 8
    name: str = "pairwise_accuracy"

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        index: dict[tuple[str, str], int] = {}
        sequences: list[list[int]] = []
        for pair in self.pairs:
            for answer in (pair.chosen, pair.rejected):
                key = (prompt_key(pair), answer)
                if key not in index:
                    index[key] = len(sequences)
                    sequences.append(keep_last(encode_exchange(ctx.tokenizer, pair.prompt, answer), self.max_length))
        scores = score_sequences(ctx.model, sequences, ctx.tokenizer.pad_token_id, batch_size=self.batch_size)
        margins = [scores[index[(prompt_key(p), p.chosen)]] - scores[index[(prompt_key(p), p.rejected)]]
                   for p in self.pairs]
        return {"pairwise_accuracy": _mean([m > 0 for m in margins]), "mean_margin": _mean(margins),
                "mean_score": _mean(scores)}


@torch.no_grad()
def completion_logprobs(
    model: PreTrainedModel, rows: Sequence[dict], pad_token_id: int, *, batch_size: int = 8
) -> tuple[list[float], list[float]]:
    """Summed log-probabilities of the chosen and of the rejected answer of each tokenised pair.

    ``rows`` hold ``prompt_ids``, ``chosen_ids`` and ``rejected_ids``
    (:func:`lightalign.data.tokenize.tokenize_preference_pairs`); prompt tokens are not counted.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chosen: list[float] = []
    rejected: list[float] = []
    try:
        for start in range(0, len(rows), batch_size):
            batch_rows = []
            for row in rows[start : start + batch_size]:
                masked = [IGNORE_INDEX] * len(row["prompt_ids"])
                batch_rows.append({
                    "chosen_input_ids": row["prompt_ids"] + row["chosen_ids"],
                    "rejected_input_ids": row["prompt_ids"] + row["rejected_ids"],
                    "chosen_labels": masked + row["chosen_ids"],
                    "rejected_labels": masked + row["rejected_ids"],
                })
            batch = {k: v.to(device) for k, v in pad_preference(batch_rows, pad_token_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            labels = batch["labels"][:, 1:]
            logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            token_logps = logps.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels != IGNORE_INDEX)
            sums = token_logps.sum(-1).tolist()
            half = len(batch_rows)
            chosen += sums[:half]
            rejected += sums[half:]
    finally:
        model.train(was_training)
    return chosen, rejected


@dataclass
class ImplicitRewardAccuracy:
    """DPO's implicit reward on held-out tokenised pairs, against the reference (:func:`use_reference`).

    Metrics: ``implicit_reward_accuracy`` (chosen reward above rejected), ``implicit_reward_margin``,
    ``implicit_reward_chosen``, ``implicit_reward_rejected``. At step 0 of DPO from an SFT adapter every
    reward is 0 (the policy *is* its reference).
    """

    rows: list[dict]
    beta: float
    pad_token_id: int
    batch_size: int = 8
    name: str = "implicit_reward"

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        policy = completion_logprobs(ctx.model, self.rows, self.pad_token_id, batch_size=self.batch_size)
        with use_reference(ctx.model):
            reference = completion_logprobs(ctx.model, self.rows, self.pad_token_id, batch_size=self.batch_size)
        chosen = [self.beta * (p - r) for p, r in zip(policy[0], reference[0], strict=True)]
        rejected = [self.beta * (p - r) for p, r in zip(policy[1], reference[1], strict=True)]
        margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
        return {"implicit_reward_accuracy": _mean([m > 0 for m in margins]), "implicit_reward_margin": _mean(margins),
                "implicit_reward_chosen": _mean(chosen), "implicit_reward_rejected": _mean(rejected)}


@dataclass
class ReferenceWinRate:
    """The policy's answers against its reference model's (the SFT model) to the same fixed prompts.

    Reference answers come from the same model with the policy adapter swapped for the reference
    (:func:`use_reference`), generated once and cached (the reference never changes), and are written to
    ``{prefix}{reference_name}_samples.jsonl``. For each scorer (``rm`` = reward model, ``gold`` judge ...):
    ``win_rate_{name}`` (the policy's answer scores higher; a tie counts half) and
    ``{reference_name}_{name}_score`` (the reference's mean score), the names the pipeline report reads.
    """

    prompts: list[PromptOnly]
    scorers: dict[str, ScoreFn]
    reference_name: str = "sft"  # "sft", or "base" for a policy that started from a fresh adapter
    max_new_tokens: int = 64
    batch_size: int = 8
    name: str = "reference_win_rate"
    _reference_answers: list[str] | None = field(default=None, init=False, repr=False)

    def _generate(self, ctx: EvalContext, desc: str) -> list[str]:
        answers = generate_answers(ctx.model, ctx.tokenizer, [p.prompt for p in self.prompts],
                                   max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, desc=desc)
        return [a.text for a in answers]

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        policy = self._generate(ctx, "eval policy answers")
        if self._reference_answers is None:
            with use_reference(ctx.model):
                self._reference_answers = self._generate(ctx, "eval reference answers")
        reference = self._reference_answers
        texts = [prompt_text(p.prompt) for p in self.prompts]
        metrics: dict[str, float] = {}
        columns: dict[str, list[float]] = {}
        for name, scorer in self.scorers.items():
            mine, theirs = scorer(texts, policy), scorer(texts, reference)
            wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(mine, theirs, strict=True)]
            metrics[f"win_rate_{name}"] = _mean(wins)
            metrics[f"{self.reference_name}_{name}_score"] = _mean(theirs)
            columns[f"{name}_score"] = theirs
        path = ctx.output_dir / f"{ctx.prefix}{self.reference_name}_samples.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as out:
            for i, (prompt, answer) in enumerate(zip(texts, reference, strict=True)):
                row = {"prompt": prompt, "response": answer, **{k: v[i] for k, v in columns.items()}}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return metrics
