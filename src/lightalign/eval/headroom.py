"""How much better a model's *sampled* answers are than its greedy ones: the headroom RL can win.

If some of ``k`` sampled answers to a prompt is correct, a policy gradient can make that answer more
likely; if none is, RL against a correctness reward has nothing to reinforce. ``pass_at_k`` (the share of
prompts with at least one correct sampled answer) against the greedy ``correct_fraction`` is that gap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightalign.data.formats import prompt_text
from lightalign.data.types import PromptOnly
from lightalign.eval.hooks import EvalContext, ScoreFn, judge_correctness, judge_scores, untouched_rng
from lightalign.generation import generate_answers


@dataclass
class PassAtK:
    """Sample ``k`` answers per prompt; ``best_of_k_score`` (mean of each prompt's best judge score) and,
    when the judge can say what is correct (``parts``, see :func:`~lightalign.eval.hooks.judge_correctness`),
    ``pass_at_k`` (share of prompts with a correct answer among the ``k``) and ``sampled_correct_fraction``.
    ``pass_k`` records ``k``. Sampling runs under its own seed and leaves the global RNG as it was.
    """

    prompts: list[PromptOnly]
    judge: ScoreFn
    k: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 24
    batch_size: int = 64
    seed: int = 0
    dense_weights: str = "auto"  # generation.dense_weights (lightalign.generation.dense_decoding)
    name: str = "pass_at_k"

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        with untouched_rng():
            torch.manual_seed(self.seed)
            answers = generate_answers(
                ctx.model, ctx.tokenizer, [p.prompt for p in self.prompts], num_samples=self.k,
                max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, temperature=self.temperature,
                top_p=self.top_p, desc=f"eval: {self.k} sampled answers per prompt",
                dense_weights=self.dense_weights,
            )
        texts = [prompt_text(p.prompt) for p in self.prompts for _ in range(self.k)]
        replies = [a.text for a in answers]
        scores = judge_scores(self.judge, texts, replies)
        groups = range(0, len(replies), self.k)
        metrics = {"pass_k": float(self.k),
                   "best_of_k_score": sum(max(scores[i : i + self.k]) for i in groups) / len(self.prompts)}
        judged = judge_correctness({"judge": self.judge}, texts, replies)
        if judged is not None:
            flags = [row["correct"] for row in judged]
            metrics["pass_at_k"] = sum(any(flags[i : i + self.k]) for i in groups) / len(self.prompts)
            metrics["sampled_correct_fraction"] = sum(flags) / len(flags)
        return metrics
