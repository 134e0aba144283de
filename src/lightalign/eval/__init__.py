"""Evaluation hooks shared by every stage, and batched answer generation."""

from lightalign.eval.generation import Answer, generate_answers
from lightalign.eval.hooks import (
    EvalContext,
    EvalHook,
    EvalHookCallback,
    HeldOutLoss,
    SampleAnswers,
    run_eval_hooks,
)

__all__ = [
    "Answer",
    "EvalContext",
    "EvalHook",
    "EvalHookCallback",
    "HeldOutLoss",
    "SampleAnswers",
    "generate_answers",
    "run_eval_hooks",
]
