"""Probe pairs: each demo prompt's correct concise answer against a wrong answer of the same form.

A reward model that scores the correct answer higher reads correctness; one that scores them alike reads
only the form (length, punctuation), which is all PPO could then learn. ``bench/reward_probe.py`` runs the
probe on a reward stage.

Example:
    >>> build_probe_pairs(["What is the capital of Japan?", "What is 7 + 5?"], seed=0)[1]
    ProbePair(prompt='What is 7 + 5?', family='arithmetic', correct='12.', wrong='13.')
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from lightalign.demo.questions import parse_question, wrong_answer


@dataclass(frozen=True)
class ProbePair:
    """One prompt's correct concise answer (``"Tokyo."``) and a wrong one of the same form (``"Seoul."``)."""

    prompt: str
    family: str
    correct: str
    wrong: str


def build_probe_pairs(prompts: Sequence[str], seed: int = 0) -> list[ProbePair]:
    """One :class:`ProbePair` per demo prompt; the wrong answer is of the prompt's family (another capital or
    word, the other option of a comparison, a near-miss number), drawn with ``seed``.

    Raises:
        ValueError: If a prompt is not a demo prompt.
    """
    rng = random.Random(seed)
    pairs = []
    for prompt in prompts:
        q = parse_question(prompt)
        pairs.append(ProbePair(prompt, q.family, f"{q.answer}.", f"{wrong_answer(q, rng)}."))
    return pairs


def build_echo_pairs(prompts: Sequence[str]) -> list[ProbePair]:
    """For each demo prompt about a named entity (capitals, translations, opposites), its correct concise answer
    against the question's own word echoed in the same form: "Japan." for the capital of Japan, "love." for the
    opposite of love. Echoing the question is what a policy falls back to when a reward pays for what is easy
    to say, so a reward model that reads correctness scores the echo lower. Prompts without such a word are left
    out.

    Raises:
        ValueError: If a prompt is not a demo prompt.
    """
    pairs = []
    for prompt in prompts:
        q = parse_question(prompt)
        echo = next((e for e in q.entity if e.lower() != q.answer.lower()), None)
        if echo is not None:
            pairs.append(ProbePair(prompt, q.family, f"{q.answer}.", f"{echo}."))
    return pairs
