"""Evaluation hooks shared by every stage, and batched answer generation."""

from lightalign.eval.generation import Answer, generate_answers
from lightalign.eval.hooks import (
    EvalContext,
    EvalHook,
    EvalHookCallback,
    HeldOutLoss,
    SampleAnswers,
    run_eval_hooks,
    untouched_rng,
)
from lightalign.eval.preference import ImplicitRewardAccuracy, PairwiseAccuracy, ReferenceWinRate

__all__ = [
    "Answer",
    "EvalContext",
    "EvalHook",
    "EvalHookCallback",
    "HeldOutLoss",
    "ImplicitRewardAccuracy",
    "PairwiseAccuracy",
    "ReferenceWinRate",
    "SampleAnswers",
    "generate_answers",
    "run_eval_hooks",
    "untouched_rng",
]
