"""Every long evaluation reports its progress batch by batch (here as the lines a stage's log file gets)."""

from __future__ import annotations

import re

import pytest

from lightalign import progress
from lightalign.data import load_prompt_examples
from lightalign.data.tokenize import tokenize_preference_pairs
from lightalign.data.types import PreferencePair
from lightalign.eval import (
    EvalContext,
    HeldOutLoss,
    ImplicitRewardAccuracy,
    PairwiseAccuracy,
    SampleAnswers,
    run_eval_hooks,
)
from lightalign.eval.kl import ReferenceKL
from lightalign.models import LoraSettings, Quantization, load_base_model
from lightalign.models.roles import load_policy, set_up_reference

from .test_preference import LengthScorer

PROMPT = [{"role": "user", "content": "Q?"}]


@pytest.fixture
def log_lines(monkeypatch, capsys):
    """The progress lines written to stderr, as a stage's log file would get them, one per batch."""
    monkeypatch.setenv("LIGHTALIGN_PROGRESS", "lines")
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)  # a line for every update, not every 30 s

    def read() -> list[str]:
        return [line for line in capsys.readouterr().err.splitlines() if line]

    return read


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    """A policy adapter with its reference (the base), as DPO and PPO evaluate it."""
    model, kind = load_policy(load_base_model(str(tiny_model_dir), Quantization()), LoraSettings(r=4, alpha=8))
    set_up_reference(model, kind)
    return model


def _counts(lines: list[str], desc: str) -> list[str]:
    """The ``done/total`` of the lines of the bar called ``desc`` (closing it may repeat the last one)."""
    counts = [m.group(1) for line in lines if (m := re.match(rf"{re.escape(desc)}: +\d+% (\d+/\d+) ", line))]
    return list(dict.fromkeys(counts))


def _pairs(n: int) -> list[PreferencePair]:
    return [PreferencePair(PROMPT, f"good answer {i}", f"bad {i}", f"p:{i}") for i in range(n)]


def test_held_out_loss(policy, tiny_tokenizer, tmp_path, log_lines):
    rows = [{"input_ids": [5, 6, 7, 8], "labels": [5, 6, 7, 8]}] * 5
    HeldOutLoss(rows, tiny_tokenizer.pad_token_id, batch_size=2)(EvalContext(policy, tiny_tokenizer, tmp_path))
    assert _counts(log_lines(), "eval model loss") == ["0/5", "2/5", "4/5", "5/5"]


def test_pairwise_accuracy(policy, tiny_tokenizer, tmp_path, log_lines):
    # a reward stage evaluates its base model first: the bar names which model is evaluated
    scorer = LengthScorer()
    PairwiseAccuracy(_pairs(2), batch_size=3)(EvalContext(scorer, tiny_tokenizer, tmp_path, prefix="base_"))
    assert _counts(log_lines(), "eval base scores") == ["0/4", "3/4", "4/4"]  # 4 distinct answers


def test_implicit_reward_of_the_policy_and_of_its_reference(policy, tiny_tokenizer, tmp_path, log_lines):
    rows = tokenize_preference_pairs(tiny_tokenizer, _pairs(2), max_length=64)[0]
    hook = ImplicitRewardAccuracy(rows, beta=0.1, pad_token_id=tiny_tokenizer.pad_token_id, batch_size=3)
    hook(EvalContext(policy, tiny_tokenizer, tmp_path))
    lines = log_lines()
    assert _counts(lines, "eval model log-probs") == ["0/4", "3/4", "4/4"]
    assert _counts(lines, "eval model reference log-probs") == ["0/4", "3/4", "4/4"]


def test_answers_and_kl_sampling(policy, tiny_tokenizer, tmp_path, log_lines):
    prompts = load_prompt_examples("demo:prompts", limit=3)
    hooks = [SampleAnswers(prompts, max_new_tokens=2, batch_size=2, write_file=False),
             ReferenceKL(prompts, reference_name="base", max_new_tokens=2, batch_size=2)]
    run_eval_hooks(hooks, EvalContext(policy, tiny_tokenizer, tmp_path))
    lines = log_lines()
    assert _counts(lines, "eval model answers") == ["0/3", "2/3", "3/3"]
    assert _counts(lines, "eval model KL to base") == ["0/3", "2/3", "3/3"]
