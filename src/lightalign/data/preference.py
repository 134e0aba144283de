"""Preference data: every supported format → :class:`~lightalign.data.types.PreferencePair`.

Formats (``format=auto`` detects them by their fields; one JSON object per row):

==============  =============================================================================================
``pairs``       explicit prompt: ``{"prompt": str | messages, "chosen": str | messages, "rejected": str | messages}``;
                implicit prompt: ``{"chosen": messages, "rejected": messages}``, the prompt being the messages the
                two share before their last (assistant) message
``hh``          Anthropic HH-RLHF: ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}``, two
                whole transcripts that share every turn but the last assistant answer
``ranking``     K-wise ranking (InstructGPT): ``{"prompt": str | messages, "responses": [str, ...],
                "ranking": [best index, ..., worst index]}``; an element of ``ranking`` may be a list of tied
                indices, e.g. ``[2, [0, 3], 1]``
==============  =============================================================================================

A ranking of K answers expands to all K·(K-1)/2 (chosen, rejected) pairs that share one ``group`` id,
each with ``weight = 1 / number of pairs of its group``. The reward stage keeps a group in one batch
element and averages its pairs (InstructGPT, Ouyang et al. 2022, §3.5): every prompt counts once however
many answers it has, and each answer is scored once per step rather than K-1 times. A plain pair is a
group of its own with weight 1.

Bad rows raise :class:`InvalidPreference` (a :class:`DataError` naming ``file:line``), or with
``invalid="skip"`` are dropped and counted by reason in :class:`PreferenceReport` (printed by the
recipes and written to ``metrics.json``): identical chosen and rejected (``identical``), an empty answer
(``empty_answer``), a ranking that is not a permutation of the responses (``bad_ranking``), the same answer
ranked twice or every answer tied (``tie``), HH transcripts or message lists that differ before their
last answer (``prefix_mismatch``), and a last message that is not the assistant's (``no_answer``).
Pairs between answers tied *on purpose* (a nested list in ``ranking``) carry no preference: they are not
formed, and counted as ``tied_pairs``. A row whose format cannot be recognised always raises.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from lightalign.data.formats import to_messages
from lightalign.data.readers import read_rows
from lightalign.data.types import Message, PreferencePair
from lightalign.errors import DataError

_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


class InvalidPreference(DataError):
    """A well-formed row whose preference cannot be used; ``reason`` is the key it is counted under."""

    def __init__(self, origin: str, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(origin, message, field=field)
        self.reason = reason


@dataclass
class PreferenceReport:
    """What became of the rows: pairs made, rows skipped by reason, tied pairs not formed."""

    rows: int = 0
    pairs: int = 0
    groups: int = 0
    tied_pairs: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_origins: list[str] = field(default_factory=list)

    def as_metrics(self, prefix: str) -> dict[str, int]:
        metrics = {f"{prefix}_tied_pairs": self.tied_pairs, f"{prefix}_invalid_rows": sum(self.skipped.values())}
        metrics.update({f"{prefix}_invalid_{reason}": count for reason, count in sorted(self.skipped.items())})
        return metrics

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        return (f"{self.rows} rows -> {self.pairs} pairs in {self.groups} groups; "
                f"skipped rows: {reasons}; tied pairs not formed: {self.tied_pairs}")


def detect_preference_format(row: dict, origin: str) -> str:
    """Name the preference format of ``row`` from its fields (see the module docstring)."""
    if "responses" in row and "ranking" in row:
        return "ranking"
    if "chosen" in row and "rejected" in row:
        if "prompt" not in row and isinstance(row["chosen"], str) and isinstance(row["rejected"], str):
            return "hh"
        return "pairs"
    fields = ", ".join(sorted(row)) or "none"
    raise DataError(origin, f"unrecognised preference row (fields: {fields}); expected 'chosen'+'rejected' "
                            "(with or without 'prompt') or 'prompt'+'responses'+'ranking'")


def parse_hh_transcript(text: str, origin: str, field: str) -> list[Message]:
    """Split ``"\\n\\nHuman: a\\n\\nAssistant: b"`` into ``[{"role": "user", ...}, {"role": "assistant", ...}]``."""
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise DataError(origin, "not an HH transcript: expected it to start with '\\n\\nHuman: '", field=field)
    return [{"role": _HH_ROLES[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2],
                                                                                            strict=True)]


def _answer(value: Any, origin: str, field: str) -> list[Message]:
    """``chosen``/``rejected`` as messages: a string is one assistant message."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if not isinstance(value, list):
        raise DataError(origin, f"expected a string or a list of messages, got {type(value).__name__}", field=field)
    return to_messages(value, origin, field)


def _prompt(value: Any, origin: str) -> list[Message]:
    if isinstance(value, str):
        if not value.strip():
            raise InvalidPreference(origin, "empty_prompt", "is empty", field="prompt")
        return [{"role": "user", "content": value}]
    return to_messages(value, origin, "prompt")


def _check_answers(chosen: str, rejected: str, origin: str) -> None:
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise InvalidPreference(origin, "empty_answer", "the answer is empty", field=name)
    if chosen.strip() == rejected.strip():
        raise InvalidPreference(origin, "identical", "chosen and rejected are the same answer: no preference")


def split_shared_prefix(chosen: list[Message], rejected: list[Message], origin: str) -> PreferencePair:
    """A pair from two dialogues that differ only in their last, assistant message."""
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if messages[-1]["role"] != "assistant":
            raise InvalidPreference(origin, "no_answer", "the last message must be the assistant's", field=name)
    if chosen[:-1] != rejected[:-1]:
        turn = next((i for i, (a, b) in enumerate(zip(chosen[:-1], rejected[:-1], strict=False)) if a != b),
                    min(len(chosen), len(rejected)) - 1)
        raise InvalidPreference(origin, "prefix_mismatch",
                                f"chosen and rejected differ at turn {turn}, before their last answer; "
                                "they must share the whole prompt")
    if not chosen[:-1]:
        raise InvalidPreference(origin, "no_prompt", "no prompt: chosen and rejected share no turn before the answer")
    _check_answers(chosen[-1]["content"], rejected[-1]["content"], origin)
    return PreferencePair(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"], origin)


def ranking_to_pairs(row: dict, origin: str, group: int) -> tuple[list[PreferencePair], int]:
    """All (better, worse) pairs of a K-wise ranking, and the number of tied pairs left out."""
    prompt = _prompt(row.get("prompt"), origin)
    responses, ranking = row.get("responses"), row.get("ranking")
    if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
        raise DataError(origin, "expected a list of at least 2 strings", field="responses")
    tiers = [t if isinstance(t, list) else [t] for t in ranking] if isinstance(ranking, list) else None
    flat = [i for tier in tiers or [] for i in tier]
    if tiers is None or any(not isinstance(i, int) or isinstance(i, bool) for i in flat) \
            or sorted(flat) != list(range(len(responses))):
        raise InvalidPreference(origin, "bad_ranking", f"{ranking!r} is not a permutation of the response "
                                f"indices 0..{len(responses) - 1} (best first)", field="ranking")
    for i, text in enumerate(responses):
        if not text.strip():
            raise InvalidPreference(origin, "empty_answer", "the answer is empty", field=f"responses[{i}]")
    tier_of = {i: n for n, tier in enumerate(tiers) for i in tier}
    by_text: dict[str, int] = {}
    for i, text in enumerate(responses):
        j = by_text.setdefault(text.strip(), i)
        if tier_of[j] != tier_of[i]:
            raise InvalidPreference(origin, "tie", f"responses {j} and {i} are the same answer but ranked "
                                    "differently", field="ranking")
    better_worse = [(i, j) for a, tier in enumerate(tiers) for i in tier for later in tiers[a + 1 :] for j in later]
    total = len(responses) * (len(responses) - 1) // 2
    if not better_worse:
        raise InvalidPreference(origin, "tie", "every response is tied: no preference", field="ranking")
    weight = 1.0 / len(better_worse)
    pairs = [PreferencePair(prompt, responses[i], responses[j], origin, group=group, weight=weight)
             for i, j in better_worse]
    return pairs, total - len(better_worse)


def to_preference_pairs(row: dict, origin: str, fmt: str = "auto", group: int = 0) -> tuple[list[PreferencePair], int]:
    """Normalise one row into pairs (one, or C(K,2) for a ranking) and the number of tied pairs left out.

    Raises:
        InvalidPreference: a usable row shape whose preference is not (see the module docstring).
        DataError: an unrecognised row.
    """
    if fmt == "auto":
        fmt = detect_preference_format(row, origin)
    if fmt == "ranking":
        return ranking_to_pairs(row, origin, group)
    for key in ("chosen", "rejected"):
        if row.get(key) is None:
            raise DataError(origin, "missing", field=key)
    if fmt == "hh":
        chosen = parse_hh_transcript(row["chosen"], origin, "chosen")
        rejected = parse_hh_transcript(row["rejected"], origin, "rejected")
    elif "prompt" in row:
        prompt = _prompt(row["prompt"], origin)
        chosen = prompt + _answer(row["chosen"], origin, "chosen")
        rejected = prompt + _answer(row["rejected"], origin, "rejected")
    else:
        if isinstance(row["chosen"], str) or isinstance(row["rejected"], str):
            raise DataError(origin, "no 'prompt': chosen/rejected strings need a 'prompt' field (or must both be "
                                    "Anthropic HH transcripts)")
        chosen = to_messages(row["chosen"], origin, "chosen")
        rejected = to_messages(row["rejected"], origin, "rejected")
    return [split_shared_prefix(chosen, rejected, origin)], 0


def load_preference_pairs(
    source: str, *, fmt: str = "auto", split: str = "train", limit: int | None = None, invalid: str = "error"
) -> tuple[list[PreferencePair], PreferenceReport]:
    """All rows of ``source`` as preference pairs.

    Args:
        source: a file, ``demo:rankings`` / ``demo:pairs``, or a Hugging Face dataset id (see ``read_rows``).
        fmt: ``auto``, ``pairs``, ``hh`` or ``ranking``.
        limit: read at most this many rows.
        invalid: ``error`` raises at the first bad row; ``skip`` drops it and counts it in the report.

    Example:
        >>> pairs, report = load_preference_pairs("demo:rankings", limit=2)
        >>> report.pairs, pairs[0].group, pairs[0].weight      # 4 answers per prompt: 6 pairs each
        (12, 0, 0.16666666666666666)
    """
    pairs: list[PreferencePair] = []
    report = PreferenceReport()
    for row, origin in read_rows(source, split):
        if limit is not None and report.rows >= limit:
            break
        report.rows += 1
        try:
            row_pairs, tied = to_preference_pairs(row, origin, fmt, group=report.rows - 1)
        except InvalidPreference as err:
            if invalid == "error":
                raise
            report.skipped[err.reason] += 1
            report.skipped_origins.append(origin)
            continue
        pairs += row_pairs
        report.tied_pairs += tied
        report.groups += 1
    report.pairs = len(pairs)
    if not pairs:
        raise DataError(source, "no usable preference pairs" + (f" ({report.summary()})" if report.rows else ""))
    return pairs, report


def prompt_key(pair: PreferencePair) -> str:
    """A string that is equal for pairs asking the same prompt."""
    return json.dumps(pair.prompt, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class DistinctAnswers:
    """The distinct (prompt, answer)s of some pairs, each once (a ranking's K·(K-1)/2 pairs share its K answers),
    to score each once and read the pairs' margins off those scores::

        distinct = DistinctAnswers.of(pairs)
        margins = distinct.margins(pairs, score(distinct.prompts, distinct.answers))
    """

    prompts: list[list[Message]]
    answers: list[str]
    index: dict[tuple[str, str], int]

    @classmethod
    def of(cls, pairs: list[PreferencePair]) -> DistinctAnswers:
        index: dict[tuple[str, str], int] = {}
        prompts: list[list[Message]] = []
        answers: list[str] = []
        for pair in pairs:
            for answer in (pair.chosen, pair.rejected):
                if (prompt_key(pair), answer) not in index:
                    index[(prompt_key(pair), answer)] = len(answers)
                    prompts.append(pair.prompt)
                    answers.append(answer)
        return cls(prompts, answers, index)

    def margins(self, pairs: list[PreferencePair], values: list[float]) -> list[float]:
        """Each pair's chosen answer's value minus its rejected one's, ``values`` one per distinct answer."""
        return [values[self.index[(prompt_key(p), p.chosen)]] - values[self.index[(prompt_key(p), p.rejected)]]
                for p in pairs]


def split_held_out(
    pairs: list[PreferencePair], fraction: float, seed: int = 0
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Hold out ``fraction`` (in [0, 1)) of the prompts, all pairs of a prompt on one side: ``(train, held_out)``.

    Holding out whole prompts keeps held-out accuracy honest: a ranking's other pairs in the training set
    would otherwise give its answers away.
    """
    keys = sorted({prompt_key(p) for p in pairs})
    if fraction == 0.0 or len(keys) < 2:
        return pairs, []
    random.Random(seed).shuffle(keys)
    held = set(keys[: max(1, math.ceil(fraction * len(keys)))])
    return [p for p in pairs if prompt_key(p) not in held], [p for p in pairs if prompt_key(p) in held]


@dataclass
class PreferenceSplits:
    """Training and held-out pairs of a preference stage, with what happened to their rows."""

    train: list[PreferencePair]
    held_out: list[PreferencePair]
    train_report: PreferenceReport
    eval_report: PreferenceReport | None = None

    def as_metrics(self) -> dict[str, int]:
        metrics = self.train_report.as_metrics("train")
        if self.eval_report is not None:
            metrics.update(self.eval_report.as_metrics("eval"))
        metrics["train_pairs"], metrics["eval_pairs"] = len(self.train), len(self.held_out)
        metrics["eval_prompts"] = len({prompt_key(p) for p in self.held_out})
        return metrics


def load_preference_splits(
    train: str,
    held_out: str | None,
    *,
    fmt: str = "auto",
    split: str = "train",
    limit: int | None = None,
    eval_limit: int | None = None,
    eval_fraction: float = 0.1,
    invalid: str = "error",
    seed: int = 0,
) -> PreferenceSplits:
    """Training pairs from ``train``; held-out pairs from ``held_out``, or else ``eval_fraction`` of the
    training prompts (see :func:`split_held_out`). ``eval_limit`` caps the held-out prompts."""
    pairs, report = load_preference_pairs(train, fmt=fmt, split=split, limit=limit, invalid=invalid)
    if held_out:
        held, eval_report = load_preference_pairs(held_out, fmt=fmt, limit=eval_limit, invalid=invalid)
        return PreferenceSplits(pairs, held, report, eval_report)
    pairs, held = split_held_out(pairs, eval_fraction, seed)
    if eval_limit is not None:
        keep = list(dict.fromkeys(prompt_key(p) for p in held))[:eval_limit]
        held = [p for p in held if prompt_key(p) in set(keep)]
    return PreferenceSplits(pairs, held, report)
