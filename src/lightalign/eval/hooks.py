"""One evaluation interface for every stage, TRL-based or ours.

An eval hook is a callable ``hook(ctx: EvalContext) -> dict[str, float]``. A stage builds its list of
hooks once, then calls :func:`run_eval_hooks` at the end (and every N steps through
:class:`EvalHookCallback` for TRL trainers, or directly from its own loop, as PPO does).
Hooks may write files into ``ctx.output_dir`` (``samples.jsonl``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from lightalign.data.collators import pad_lm
from lightalign.data.formats import prompt_text
from lightalign.data.types import PromptOnly
from lightalign.errors import LightalignError
from lightalign.generation import Answer, generate_answers
from lightalign.models.logprobs import causal_lm_label_logprobs
from lightalign.models.modes import eval_mode
from lightalign.progress import iter_batches
from lightalign.rundir import read_log

ScoreFn = Callable[[list[str], list[str]], list[float]]  # (prompts, answers) -> scores


class JudgeError(LightalignError):
    """A judge (a ``(prompts, answers) -> scores`` callable) raised or returned unusable scores."""


def judge_scores(
    judge: ScoreFn, prompts: list, answers: list[str], *, name: str | None = None,
    error: type[LightalignError] = JudgeError,
) -> list[float]:
    """``judge(prompts, answers)``, checked: one finite number per answer.

    Args:
        judge: the scorer; ``prompts`` are what it reads (texts, or message lists for a scorer that accepts them).
        name: how the error names the scorer; default ``judge <its class or function name>``.
        error: the class raised; :class:`~lightalign.errors.RewardError` for a reward being trained on.

    Raises:
        JudgeError: (or ``error``) one line naming the judge and what was wrong (it raised, gave the wrong
            number of scores, or a score that is not a finite number).
    """
    name = name or f"judge {getattr(judge, '__qualname__', None) or type(judge).__qualname__}"
    try:
        scores = list(judge(prompts, answers))
    except Exception as err:  # noqa: BLE001 -- any failure of user code becomes one line
        raise error(f"{name} raised {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    if len(scores) != len(answers):
        raise error(f"{name} returned {len(scores)} scores for {len(answers)} answers")
    for i, score in enumerate(scores):
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise error(f"{name} returned {score!r} for answer {i} ({answers[i][:40]!r} to "
                        f"{prompts[i][:40]!r}); scores must be finite numbers")
    return [float(s) for s in scores]


CORRECT = "correct_fraction"  # the share of correct answers; per question family: "correct_fraction/<family>"


def judge_correctness(scorers: dict[str, ScoreFn], prompts: list[str], answers: list[str]) -> list[dict] | None:
    """Whether each answer is correct, from the first scorer that can say so; ``None`` if none can.

    A scorer says what is correct by also having ``parts(prompts, answers) -> list[dict[str, float]]``, each
    dict holding ``"correct"`` (1 or 0), and optionally ``group(prompt) -> str``, the prompt's question
    family (:class:`lightalign.demo.GoldJudge` has both). A plain ``(prompts, answers) -> scores`` callable
    only scores.

    Returns:
        One ``{"correct": bool}`` per answer, with ``"family"`` when the scorer groups prompts.
    """
    judge = next((s for s in scorers.values() if callable(getattr(s, "parts", None))), None)
    if judge is None:
        return None
    group = getattr(judge, "group", None)
    rows = [{"correct": bool(parts["correct"])} for parts in judge.parts(prompts, answers)]
    if callable(group):
        for row, prompt in zip(rows, prompts, strict=True):
            row["family"] = group(prompt)
    return rows


def correct_fractions(rows: list[dict]) -> dict[str, float]:
    """``correct_fraction`` over ``rows`` (``{"correct", "family"?}``) and ``correct_fraction/<family>`` per family.

    Example:
        >>> correct_fractions([{"correct": True, "family": "capital"}, {"correct": False, "family": "capital"},
        ...                    {"correct": True, "family": "compare"}])
        {'correct_fraction': 0.6666666666666666, 'correct_fraction/capital': 0.5, 'correct_fraction/compare': 1.0}
    """
    metrics = {CORRECT: sum(r["correct"] for r in rows) / max(len(rows), 1)}
    for family in sorted({r["family"] for r in rows if "family" in r}):
        flags = [r["correct"] for r in rows if r.get("family") == family]
        metrics[f"{CORRECT}/{family}"] = sum(flags) / len(flags)
    return metrics


@dataclass
class EvalContext:
    """What a hook may look at. ``prefix`` names the model being evaluated (``""``, ``"base_"``)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    output_dir: Path
    step: int = 0
    prefix: str = ""


class EvalHook(Protocol):
    name: str

    def __call__(self, ctx: EvalContext) -> dict[str, float]: ...


def eval_desc(ctx: EvalContext, what: str) -> str:
    """The label of an evaluation's progress bar: ``eval model answers``, ``eval base loss``."""
    return f"eval {ctx.prefix.rstrip('_') or 'model'} {what}"


def run_eval_hooks(hooks: Sequence[EvalHook], ctx: EvalContext) -> dict[str, float]:
    """Run every hook and merge their metrics, each key prefixed with ``ctx.prefix``."""
    metrics: dict[str, float] = {}
    for hook in hooks:
        for key, value in hook(ctx).items():
            metrics[ctx.prefix + key] = float(value)
    return metrics


def untouched_rng() -> AbstractContextManager:
    """A block whose random draws leave the global torch RNGs (CPU and every GPU) as they were.

    Some hooks sample (:class:`lightalign.eval.kl.ReferenceKL`); run mid-training they must not shift the
    training RNG, or evaluating would change what is trained and a resumed run would diverge.
    """
    return torch.random.fork_rng(devices=list(range(torch.cuda.device_count())))


@dataclass
class HeldOutLoss:
    """Mean token loss and perplexity on held-out tokenised rows (``eval_loss``, ``perplexity``)."""

    rows: list[dict]
    pad_token_id: int
    batch_size: int = 8
    name: str = "held_out_loss"

    @torch.no_grad()
    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        model = ctx.model
        device = next(model.parameters()).device
        total_loss, total_tokens = 0.0, 0
        with eval_mode(model):
            for rows in iter_batches(self.rows, self.batch_size, eval_desc(ctx, "loss")):
                batch = pad_lm(rows, self.pad_token_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                token_logps = causal_lm_label_logprobs(model, batch["input_ids"], batch["labels"],
                                                       attention_mask=batch["attention_mask"])
                total_loss -= token_logps.sum().item()
                total_tokens += int((batch["labels"][:, 1:] != -100).sum())
        loss = total_loss / max(total_tokens, 1)
        return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}


@dataclass
class SampleAnswers:
    """Answer fixed prompts greedily, score them, and write ``{prefix}samples.jsonl``.

    Metrics: ``answer_tokens`` (mean), ``eos_fraction`` (answers that ended with EOS), one ``{name}_score``
    per scorer (e.g. ``gold_score`` from the demo task's judge) and, when a scorer can say which answers are
    correct (:func:`judge_correctness`), ``correct_fraction`` and ``correct_fraction/<family>``. Each row of
    the file also records its ``answer_tokens`` and ``max_new_tokens``, so a later stage can reuse the answers
    (:meth:`read_answers`) instead of generating them again, and then ``correct`` and ``family``, so that
    answers of different models can be paired by prompt.
    """

    prompts: list[PromptOnly]
    scorers: dict[str, ScoreFn] = field(default_factory=dict)
    max_new_tokens: int = 64
    batch_size: int = 8
    write_file: bool = True
    dense_weights: str = "auto"  # generation.dense_weights (lightalign.generation.dense_decoding)
    name: str = "samples"

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        answers = generate_answers(
            ctx.model,
            ctx.tokenizer,
            [p.prompt for p in self.prompts],
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            desc=eval_desc(ctx, "answers"),
            dense_weights=self.dense_weights,
        )
        return self.record(ctx, answers)

    def record(self, ctx: EvalContext, answers: list[Answer]) -> dict[str, float]:
        """Score ``answers`` (one per prompt), write ``{prefix}samples.jsonl`` and return the metrics."""
        texts = [prompt_text(p.prompt) for p in self.prompts]
        replies = [a.text for a in answers]
        scores = {name: scorer(texts, replies) for name, scorer in self.scorers.items()}
        judged = judge_correctness(self.scorers, texts, replies)
        if self.write_file:
            path = ctx.output_dir / f"{ctx.prefix}samples.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as out:
                for i, (prompt, answer) in enumerate(zip(texts, answers, strict=True)):
                    row = {"prompt": prompt, "response": answer.text, "ended_with_eos": answer.ended_with_eos,
                           "answer_tokens": answer.num_tokens, "max_new_tokens": self.max_new_tokens}
                    row.update({f"{name}_score": values[i] for name, values in scores.items()})
                    row.update(judged[i] if judged else {})
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
        metrics = {
            "answer_tokens": sum(a.num_tokens for a in answers) / len(answers),
            "eos_fraction": sum(a.ended_with_eos for a in answers) / len(answers),
        }
        for name, values in scores.items():
            metrics[f"{name}_score"] = sum(values) / len(values)
        if judged:
            metrics.update(correct_fractions(judged))
        return metrics

    def read_answers(self, path: Path) -> list[Answer] | None:
        """The answers in a ``samples.jsonl`` written by this hook's settings, or ``None`` if they differ.

        Greedy answers depend only on the model, the prompts and ``max_new_tokens``: when a file holds the
        same prompts, in order, at the same ``max_new_tokens``, its answers are what generating would give.
        """
        if not path.is_file():
            return None
        rows = read_log(path)
        texts = [prompt_text(p.prompt) for p in self.prompts]
        if [row.get("prompt") for row in rows] != texts:
            return None
        if any(row.get("max_new_tokens") != self.max_new_tokens or "answer_tokens" not in row for row in rows):
            return None  # other settings, or a file from before answer_tokens was recorded
        return [Answer(row["response"], int(row["answer_tokens"]), bool(row["ended_with_eos"])) for row in rows]


class EvalHookCallback(TrainerCallback):
    """Runs eval hooks every ``every_n_steps`` optimizer steps inside a transformers/TRL trainer."""

    def __init__(self, hooks: Sequence[EvalHook], tokenizer: PreTrainedTokenizerBase, output_dir: Path,
                 every_n_steps: int, log: Callable[[dict[str, float]], None] | None = None) -> None:
        self.hooks = list(hooks)
        self.tokenizer = tokenizer
        self.output_dir = output_dir
        self.every_n_steps = every_n_steps
        self.log = log

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001 (transformers API)
        if self.every_n_steps <= 0 or state.global_step % self.every_n_steps != 0 or model is None:
            return control
        if not state.is_world_process_zero:  # under DDP rank 0 alone evaluates (the weights are identical)
            return control
        ctx = EvalContext(model, self.tokenizer, self.output_dir / "evals" / f"step-{state.global_step}",
                          step=state.global_step)
        with untouched_rng():
            metrics = {f"eval/{k}": v for k, v in run_eval_hooks(self.hooks, ctx).items()}
        state.log_history.append({**metrics, "step": state.global_step})
        if self.log:
            self.log(metrics)
        return control
