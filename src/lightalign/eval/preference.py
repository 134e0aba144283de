"""Eval hooks of the preference stages (the one hook interface: ``hook(ctx) -> dict[str, float]``).

- :class:`PairwiseAccuracy`: a reward model on held-out pairs;
- :class:`ImplicitRewardAccuracy`: DPO's implicit reward ``β·(log π(y|x) - log π_ref(y|x))`` on held-out pairs;
- :class:`ReferenceWinRate`: :class:`~lightalign.eval.hooks.SampleAnswers` run on the policy and on its
  reference (the SFT model), with each scorer's win rate (reward model, gold judge), for DPO, PPO and GRPO;
- :func:`reference_hooks`: those with the KL to the reference, the hooks every policy stage runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import PreTrainedModel

from lightalign.data.collators import pad_lm
from lightalign.data.preference import DistinctAnswers
from lightalign.data.tokenize import IGNORE_INDEX, encode_exchange, keep_last
from lightalign.data.types import PreferencePair, PromptOnly
from lightalign.eval.hooks import EvalContext, EvalHook, SampleAnswers, ScoreFn, eval_desc
from lightalign.eval.kl import ReferenceKL
from lightalign.models.logprobs import causal_lm_label_logprobs
from lightalign.models.modes import eval_mode
from lightalign.models.roles import use_reference
from lightalign.progress import iter_batches
from lightalign.reward_model import score_sequences
from lightalign.rundir import SAMPLES, read_log


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
        distinct = DistinctAnswers.of(self.pairs)
        sequences = [keep_last(encode_exchange(ctx.tokenizer, prompt, answer), self.max_length)
                     for prompt, answer in zip(distinct.prompts, distinct.answers, strict=True)]
        scores: list[float] = []
        for batch in iter_batches(sequences, self.batch_size, eval_desc(ctx, "scores"), unit="answer"):
            scores += score_sequences(ctx.model, batch, batch_size=self.batch_size)
        margins = distinct.margins(self.pairs, scores)
        return {"pairwise_accuracy": _mean([m > 0 for m in margins]), "mean_margin": _mean(margins),
                "mean_score": _mean(scores)}


@torch.no_grad()
def completion_logprobs(
    model: PreTrainedModel, rows: Sequence[dict], pad_token_id: int, *, batch_size: int = 8, desc: str = "log-probs"
) -> tuple[list[float], list[float]]:
    """Summed log-probabilities of the chosen and of the rejected answer of each tokenised pair.

    ``rows`` hold ``prompt_ids``, ``chosen_ids`` and ``rejected_ids``
    (:func:`lightalign.data.tokenize.tokenize_preference_pairs`); prompt tokens are not counted. Each
    distinct (prompt, answer) is scored once: the K·(K-1)/2 pairs of a ranking share its K answers, so a
    ranking of 4 costs 4 sequences instead of 12.
    """
    index: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    sequences: list[dict] = []
    for row in rows:
        for key in ("chosen_ids", "rejected_ids"):
            seq = (tuple(row["prompt_ids"]), tuple(row[key]))
            if seq not in index:
                index[seq] = len(sequences)
                sequences.append({"input_ids": row["prompt_ids"] + row[key],
                                  "labels": [IGNORE_INDEX] * len(row["prompt_ids"]) + row[key]})
    sums = _sequence_logprobs(model, sequences, pad_token_id, batch_size, desc)
    chosen = [sums[index[(tuple(r["prompt_ids"]), tuple(r["chosen_ids"]))]] for r in rows]
    rejected = [sums[index[(tuple(r["prompt_ids"]), tuple(r["rejected_ids"]))]] for r in rows]
    return chosen, rejected


def _sequence_logprobs(model: PreTrainedModel, rows: Sequence[dict], pad_token_id: int, batch_size: int,
                       desc: str) -> list[float]:
    """Summed log-probability of each row's labelled tokens (``pad_lm`` rows)."""
    device = next(model.parameters()).device
    sums: list[float] = []
    with eval_mode(model):
        for chunk in iter_batches(rows, batch_size, desc, unit="answer"):
            batch = {k: v.to(device) for k, v in pad_lm(chunk, pad_token_id).items()}
            token_logps = causal_lm_label_logprobs(model, batch["input_ids"], batch["labels"],
                                                   attention_mask=batch["attention_mask"])
            sums += token_logps.sum(-1).tolist()
    return sums


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
        policy = completion_logprobs(ctx.model, self.rows, self.pad_token_id, batch_size=self.batch_size,
                                     desc=eval_desc(ctx, "log-probs"))
        with use_reference(ctx.model):
            reference = completion_logprobs(ctx.model, self.rows, self.pad_token_id, batch_size=self.batch_size,
                                            desc=eval_desc(ctx, "reference log-probs"))
        chosen = [self.beta * (p - r) for p, r in zip(policy[0], reference[0], strict=True)]
        rejected = [self.beta * (p - r) for p, r in zip(policy[1], reference[1], strict=True)]
        margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
        return {"implicit_reward_accuracy": _mean([m > 0 for m in margins]), "implicit_reward_margin": _mean(margins),
                "implicit_reward_chosen": _mean(chosen), "implicit_reward_rejected": _mean(rejected)}


@dataclass
class ReferenceWinRate:
    """The policy's answers against its reference model's (the SFT model) to the same fixed prompts.

    Runs ``samples`` (a :class:`SampleAnswers`: greedy answers, scored by each of its scorers) on the policy,
    then on the reference: the same model with the policy adapter swapped for the reference
    (:func:`use_reference`). The reference never changes, so its answers are generated once and cached.
    Metrics: those of ``samples`` for the policy (``gold_score``, ``rm_score`` ..., ``samples.jsonl``), the
    same with a ``{reference_name}_`` prefix for the reference (``sft_gold_score``, ``sft_samples.jsonl``),
    and per scorer ``win_rate_{name}``: the share of prompts where the policy's answer scores higher (a tie
    counts half). These are the names the pipeline report reads.
    """

    samples: SampleAnswers
    reference_name: str = "sft"  # "sft", or "base" for a policy that started from a fresh adapter
    # the reference's own samples.jsonl (the SFT stage's): reused, not regenerated, when it answered the
    # same prompts at the same max_new_tokens (SampleAnswers.read_answers); only the scorers run again
    reference_samples: Path | None = None
    name: str = "reference_win_rate"
    _reference: tuple[dict[str, float], list[dict]] | None = field(default=None, init=False, repr=False)

    def _answer(self, ctx: EvalContext) -> tuple[dict[str, float], list[dict]]:
        return self._read(ctx, self.samples(ctx))

    @staticmethod
    def _read(ctx: EvalContext, metrics: dict[str, float]) -> tuple[dict[str, float], list[dict]]:
        path = ctx.output_dir / f"{ctx.prefix}{SAMPLES}"  # per-answer scores, written by SampleAnswers
        return metrics, read_log(path)

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        if not self.samples.write_file:
            raise ValueError("ReferenceWinRate reads the per-answer scores from samples.jsonl: write_file=True")
        metrics, policy = self._answer(ctx)
        reference_ctx = replace(ctx, prefix=f"{ctx.prefix}{self.reference_name}_")
        if self._reference is None:
            known = self.samples.read_answers(self.reference_samples) if self.reference_samples else None
            if known is not None:
                self._reference = self._read(reference_ctx, self.samples.record(reference_ctx, known))
            else:
                with use_reference(ctx.model):
                    self._reference = self._answer(reference_ctx)
        else:  # cached: write this evaluation's copy of the reference answers too
            rows = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in self._reference[1])
            (ctx.output_dir / f"{reference_ctx.prefix}{SAMPLES}").write_text(rows, encoding="utf-8")
        reference_metrics, reference = self._reference
        metrics.update({f"{self.reference_name}_{key}": value for key, value in reference_metrics.items()})
        for scorer in self.samples.scorers:
            key = f"{scorer}_score"
            wins = [1.0 if a[key] > b[key] else 0.5 if a[key] == b[key] else 0.0
                    for a, b in zip(policy, reference, strict=True)]
            metrics[f"win_rate_{scorer}"] = _mean(wins)
        return metrics


def reference_hooks(
    prompts: list[PromptOnly],
    scorers: dict[str, ScoreFn],
    *,
    reference_name: str,
    reference_samples: Path | None = None,
    compare: bool = True,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    temperature: float = 1.0,
    dense_weights: str = "auto",
) -> list[EvalHook]:
    """What a stage that trains a policy against a reference (DPO, PPO, GRPO) evaluates on fixed prompts.

    The policy's greedy answers scored by each scorer (:class:`~lightalign.eval.hooks.SampleAnswers`); with
    ``compare``, the reference's answers too (``{reference_name}_*`` metrics, its ``samples.jsonl`` reused from
    ``reference_samples`` when it answered the same prompts) and the policy's win rates against them
    (:class:`ReferenceWinRate`); and how far the policy has moved from the reference, ``kl_to_{reference_name}``
    on answers sampled at ``temperature`` (:class:`~lightalign.eval.kl.ReferenceKL`). ``dense_weights``: how
    every sampler decodes (``generation.dense_weights``, :func:`~lightalign.generation.dense_decoding`).
    """
    samples = SampleAnswers(prompts, scorers, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            dense_weights=dense_weights)
    answers = ReferenceWinRate(samples, reference_name, reference_samples=reference_samples) if compare else samples
    kl = ReferenceKL(prompts, reference_name=reference_name, max_new_tokens=max_new_tokens, batch_size=batch_size,
                     temperature=temperature, dense_weights=dense_weights)
    return [answers, kl]
