"""Probe pairs: each demo prompt's correct answer against a wrong answer of the same form.

A reward model that scores the correct answer higher reads correctness; one that scores them alike reads
only the form (length, punctuation), which is all PPO could then learn. ``bench/reward_probe.py`` runs the
probe on a reward stage. The answers are concise ("Tokyo.") or, with ``form="sentence"``, the full sentence the
SFT model mostly answers in ("The capital of Japan is Tokyo."): a reward model trained on the SFT model's own
answers has seen that form far more often than the concise one.

Example:
    >>> build_probe_pairs(["What is the capital of Japan?", "What is 7 + 5?"], seed=0)[1]
    ProbePair(prompt='What is 7 + 5?', family='arithmetic', correct='12.', wrong='13.')
    >>> build_probe_pairs(["What is 7 + 5?"], seed=0, form="sentence")[0].wrong
    '7 plus 5 equals 13.'
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from lightalign.demo.questions import parse_question, wrong_answer


@dataclass(frozen=True)
class ProbePair:
    """One prompt's correct answer (``"Tokyo."``) and a wrong one of the same form (``"Seoul."``), both concise or
    both full sentences."""

    prompt: str
    family: str
    correct: str
    wrong: str


PROBE_FORMS = ("concise", "sentence")


def build_probe_pairs(prompts: Sequence[str], seed: int = 0, form: str = "concise") -> list[ProbePair]:
    """One :class:`ProbePair` per demo prompt; the wrong answer is of the prompt's family (another capital or
    word, the other option of a comparison, a near-miss number), drawn with ``seed``; the same wrong answers in
    either ``form`` (:data:`PROBE_FORMS`): ``"Seoul."`` or ``"The capital of Japan is Seoul."``.

    Raises:
        ValueError: If a prompt is not a demo prompt, or ``form`` is not one of :data:`PROBE_FORMS`.
    """
    if form not in PROBE_FORMS:
        raise ValueError(f"form={form!r} is not one of {', '.join(PROBE_FORMS)}")
    rng = random.Random(seed)
    pairs = []
    for prompt in prompts:
        q = parse_question(prompt)
        wrong = wrong_answer(q, rng)
        if form == "sentence":
            pairs.append(ProbePair(prompt, q.family, q.verbose(), q.verbose(wrong)))
        else:
            pairs.append(ProbePair(prompt, q.family, f"{q.answer}.", f"{wrong}."))
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
