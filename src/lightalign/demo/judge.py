"""The gold judge: a programmatic stand-in for InstructGPT's human labelers on the demo task.

It prefers answers that are correct, concise and well-formed, in that order of weight::

    score = repetition * (0.60 * correct + 0.25 * concise + 0.15 * well_formed)    in [0, 1]

- ``correct`` (1 or 0): of the family's possible answers (all capitals, all numbers except the
  operands, the two options of a comparison, every word of the target language, every day but the
  one asked about, ...), the first one the answer names is the right one. Matching is on lower-cased
  words without accents, so ``"the capital of japan is tokyo"`` is correct, ``"Seoul or Tokyo."`` is
  not (a hedge), chatter after a right answer does not make it wrong (conciseness pays for it), and
  numbers must be written as digits.
- ``concise`` = ``max(0, 1 - extra_words / 10)``, where extra words are those beyond the length of the
  reference answer ("The capital of Japan is Tokyo." has 5 extra words: 0.5).
- ``well_formed``: the mean of three checks: starts with a capital letter or a digit, ends with a single
  period, fits on one line.
- ``repetition`` = 0.5 if a sentence or a three-word sequence occurs twice ("Tokyo. Tokyo."), else 1:
  degenerate loops are the classic failure of reward optimisation.

An answer without any word or number scores 0. A prompt that is not a demo prompt raises ValueError
(a silent 0 would hide a mix-up of data sets). Answers are decoded text without special tokens.

Examples:
    >>> gold_judge("What is the capital of Japan?", "Tokyo.")
    1.0
    >>> gold_judge("What is the capital of Japan?", "The capital of Japan is Tokyo.")
    0.875
    >>> gold_judge("What is the capital of Japan?", "Kyoto.")
    0.4
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, fields
from typing import Literal

from lightalign.demo.questions import Question, parse_question
from lightalign.errors import ConfigError

W_CORRECT, W_CONCISE, W_FORM = 0.60, 0.25, 0.15
EXTRA_WORDS_TO_ZERO = 10
REPETITION_FACTOR = 0.5


def _words(text: str) -> list[str]:
    """Lower-cased words and numbers without accents: ``"Bogotá, 12."`` -> ``["bogota", "12"]``."""
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    return re.findall(r"[a-z]+|\d+", text.lower())


def _first_named(q: Question, words: list[str]) -> tuple[str, ...] | None:
    """The first of the question's possible answers that ``words`` names, as words, or None."""
    if not q.candidates:  # arithmetic: any number that is not an operand
        return next(((w,) for w in words if w.isdigit() and w not in q.excluded), None)
    by_first: dict[str, list[tuple[str, ...]]] = {}
    for cand in sorted((tuple(_words(c)) for c in q.candidates), key=len, reverse=True):
        by_first.setdefault(cand[0], []).append(cand)
    for i, word in enumerate(words):
        for cand in by_first.get(word, ()):  # longest first: "new delhi" before a bare "new"
            if tuple(words[i : i + len(cand)]) == cand:
                return cand
    return None


def _is_repetitive(text: str, words: list[str]) -> bool:
    """Whether a sentence or a three-word sequence occurs twice: "Tokyo. Tokyo.", "is the capital ... is the
    capital"."""
    sentences = [tuple(_words(s)) for s in re.split(r"[.!?\n]+", text)]
    sentences = [s for s in sentences if s]
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    return len(set(sentences)) < len(sentences) or len(set(trigrams)) < len(trigrams)


@dataclass(frozen=True)
class JudgeParts:
    """What the gold judge saw in one answer; ``score`` combines the rest (see the module docstring).

    Attributes:
        correct: The first of the family's possible answers that the answer names is the right one.
        concise: ``max(0, 1 - extra_words / 10)``.
        well_formed: The share of the three form checks passed.
        repetitive: A sentence or a three-word sequence occurs twice.
        score: ``repetition * (0.60 * correct + 0.25 * concise + 0.15 * well_formed)``, rounded to 6 places.
    """

    correct: bool
    concise: float
    well_formed: float
    repetitive: bool
    score: float


def judge_parts(prompt: str, answer: str) -> JudgeParts:
    """Judge ``answer`` to the demo ``prompt`` part by part, by the rules of this module's docstring.

    Example:
        >>> judge_parts("What is the capital of Japan?", "The capital of Japan is Tokyo.")
        JudgeParts(correct=True, concise=0.5, well_formed=1.0, repetitive=False, score=0.875)

    Raises:
        ValueError: If ``prompt`` is not a demo prompt. Never raises on ``answer``.
    """
    q = parse_question(prompt)
    text = answer.strip() if isinstance(answer, str) else ""
    words = _words(text)
    if not words:
        return JudgeParts(correct=False, concise=0.0, well_formed=0.0, repetitive=False, score=0.0)
    reference = _words(q.answer)
    correct = _first_named(q, words) == tuple(reference)
    concise = max(0.0, 1.0 - max(0, len(words) - len(reference)) / EXTRA_WORDS_TO_ZERO)
    checks = (text[0].isupper() or text[0].isdigit(), bool(re.search(r"[^.]\.$", text)), "\n" not in text)
    form = sum(checks) / len(checks)
    repetitive = _is_repetitive(text, words)
    score = W_CORRECT * correct + W_CONCISE * concise + W_FORM * form
    if repetitive:
        score *= REPETITION_FACTOR
    return JudgeParts(correct, concise, form, repetitive, round(min(1.0, score), 6))


AnswerForm = Literal["echo", "short", "sentence"]
SHORT_WORDS = 2


def answer_form(prompt: str, answer: str) -> AnswerForm:
    """How an answer to the demo ``prompt`` is put, whatever it says: ``"echo"`` when every word of it is a word
    of the question and the right answer is not ("Japan." or "Japan is Japan." for the capital of Japan, "10."
    for 10 + 6: what a policy falls back to when a reward pays for what is easy to say; a comparison's answer is
    in its question, so it never echoes), ``"short"`` for another answer of at most two words or numbers
    ("Tokyo."), else ``"sentence"`` ("The capital of Japan is Tokyo."); an answer without words adds nothing to
    the question, so it counts as an echo. Not part of the judge's score:
    ``bench/seed_spread.py`` counts the forms, because on the demo task a small model is right more often when
    it writes the sentence that leads to the answer.

    Example:
        >>> [answer_form("What is the capital of Japan?", a) for a in ("Japan.", "Tokyo.", "It is Tokyo.")]
        ['echo', 'short', 'sentence']

    Raises:
        ValueError: If ``prompt`` is not a demo prompt.
    """
    asked = set(_words(prompt))
    words = _words(answer) if isinstance(answer, str) else []
    if set(words) <= asked and not set(_words(parse_question(prompt).answer)) <= asked:
        return "echo"
    return "short" if len(words) <= SHORT_WORDS else "sentence"


def gold_judge(prompt: str, answer: str) -> float:
    """Score ``answer`` to the demo ``prompt`` in [0, 1]: :func:`judge_parts`' ``score``.

    Raises:
        ValueError: If ``prompt`` is not a demo prompt. Never raises on ``answer``.
    """
    return judge_parts(prompt, answer).score


class GoldJudge:
    """The gold judge as a batch reward function, the signature PPO and GRPO call (``_target_:
    lightalign.demo.GoldJudge``).

    Besides the scores it gives each answer's parts (:meth:`parts`) and each prompt's question family
    (:meth:`group`): :class:`lightalign.eval.SampleAnswers` reads them into ``correct_fraction``.

    Args:
        part: which number of :class:`JudgeParts` a call returns: ``"score"`` (the whole judgement, the
            default) or one part, e.g. ``"correct"`` (1 or 0): a verifiable reward that pays for being
            right and nothing else.

    Example:
        >>> judge = GoldJudge()
        >>> judge(["What is 7 + 5?", "What is 7 + 5?"], ["12.", "13."])
        [1.0, 0.4]
        >>> GoldJudge(part="correct")(["What is 7 + 5?"] * 2, ["It is 12, I think", "13."])
        [1.0, 0.0]
        >>> judge.parts(["What is 7 + 5?"], ["13."])[0]["correct"], judge.group("What is 7 + 5?")
        (0.0, 'arithmetic')
    """

    def __init__(self, part: str = "score") -> None:
        names = [f.name for f in fields(JudgeParts)]
        if part not in names:
            raise ConfigError(f"GoldJudge part={part!r} is not one of {', '.join(names)}")
        self.part = part

    def __call__(self, prompts: list[str], answers: list[str]) -> list[float]:
        """Score each answer to its prompt: :func:`gold_judge`, or the chosen part of :func:`judge_parts`."""
        return [p[self.part] for p in self.parts(prompts, answers)]

    def parts(self, prompts: list[str], answers: list[str]) -> list[dict[str, float]]:
        """Each answer's :class:`JudgeParts` as numbers: ``{"correct": 1.0, "concise": 0.5, ..., "score": 0.875}``."""
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        return [{k: float(v) for k, v in asdict(judge_parts(p, a)).items()}
                for p, a in zip(prompts, answers, strict=True)]

    def group(self, prompt: str) -> str:
        """The prompt's question family: ``capital``, ``arithmetic``, ``compare``, ``translate``, ..."""
        return parse_question(prompt).family
