"""Ranking files: the InstructGPT step where several of the model's own answers to a prompt are ranked.

One row of a ranking file (the reward stage's ``ranking`` format, :mod:`lightalign.data.preference`)::

    {"prompt": "What is 7 + 5?", "responses": ["12.", "13.", "12. Hope this helps!"], "ranking": [0, 2, 1]}

``ranking`` lists 0-based indices of ``responses``, best first; a nested list ties answers (``[0, [1, 2]]``).
Two writers produce them: a person in the terminal (``lightalign rank``) and a judge in the ``rankings``
stage (``recipes/rankings.py``). Both append one fsynced line per prompt and resume by skipping the prompts
already in the file, with the helpers here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lightalign.data.formats import prompt_text
from lightalign.data.types import Message
from lightalign.errors import DataError
from lightalign.eval.hooks import ScoreFn, judge_scores
from lightalign.generation import generate_answers

Ranking = list[int | list[int]]
SampleFn = Callable[[list[Message], int, int], list[str]]  # (prompt, how many, seed) -> answers
SCORE_DECIMALS = 6  # scores equal to this many decimals tie: float noise must not invent a preference


def prompt_key(prompt: str | list[Message]) -> str:
    """One string per prompt, whether it is stored as text or as a one-message list."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)


def stored_prompt(prompt: list[Message]) -> str | list[Message]:
    """A single user turn is stored as plain text (as people write ranking files), anything else as messages."""
    return prompt[0]["content"] if len(prompt) == 1 and prompt[0]["role"] == "user" else prompt


def read_ranking_rows(path: Path) -> list[dict]:
    """The complete rows of a ranking file, after cutting off a last line torn by a crash mid-write.

    Raises:
        DataError: naming ``file:line`` if a complete line is not a JSON object with a ``prompt``.
    """
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = len(data) if data.endswith(b"\n") else data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as file:  # only the unterminated tail goes: every complete line stays
            file.truncate(end)
            file.flush()
            os.fsync(file.fileno())
    rows = []
    for number, line in enumerate(data[:end].decode("utf-8").splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
                prompt_key(row["prompt"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DataError(f"{path}:{number}", f"not a ranking row ({err}); fix or move the file") from None
            rows.append(row)
    return rows


def resume_rankings(path: Path) -> set[str]:
    """Prompt keys already ranked in ``path`` (see :func:`read_ranking_rows`)."""
    return {prompt_key(row["prompt"]) for row in read_ranking_rows(path)}


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and fsync it (and, for a new file, its folder) before returning."""
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(row, ensure_ascii=False) + "\n")
        file.flush()
        os.fsync(file.fileno())
    if new:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def distinct_answers(sample: SampleFn, prompt: list[Message], k: int, seed: int, rounds: int = 3) -> list[str]:
    """Up to ``k`` distinct, non-empty answers; identical answers would make an unusable (tied) ranking."""
    answers: list[str] = []
    for attempt in range(rounds):
        answers = distinct_texts([*answers, *sample(prompt, k - len(answers), seed + attempt)])
        if len(answers) >= k:
            break
    return answers[:k]


def ranking_from_scores(scores: Sequence[float]) -> Ranking:
    """Indices best first, answers with equal scores (to ``SCORE_DECIMALS``) tied in a nested list.

    Example:
        >>> ranking_from_scores([0.4, 1.0, 0.4, 0.9])
        [1, 3, [0, 2]]
    """
    tiers: dict[float, list[int]] = {}
    for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        tiers.setdefault(round(scores[i], SCORE_DECIMALS), []).append(i)
    return [members[0] if len(members) == 1 else members for members in tiers.values()]


def ranked_pairs(row: dict, min_margin: float = 0.0) -> list[dict]:
    """Every (chosen, rejected) pair a ranking row states; tied answers form none.

    With ``min_margin > 0`` only pairs whose judge scores (the row's ``scores``) differ by at least that much:
    a judge that weighs correctness above form can then hand DPO only the pairs that differ in correctness.

    Example:
        >>> ranked_pairs({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [1, [0, 2]]})
        [{'prompt': 'p', 'chosen': 'b', 'rejected': 'a'}, {'prompt': 'p', 'chosen': 'b', 'rejected': 'c'}]
        >>> ranked_pairs({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1, 2],
        ...               "scores": [0.9, 0.7, 0.2]}, min_margin=0.5)  # 0.7 - 0.2 is 0.5 to 6 places
        [{'prompt': 'p', 'chosen': 'a', 'rejected': 'c'}, {'prompt': 'p', 'chosen': 'b', 'rejected': 'c'}]

    Raises:
        DataError: if ``min_margin > 0`` and the row has no ``scores`` (a person's ranking has none).
    """
    tiers = [t if isinstance(t, list) else [t] for t in row["ranking"]]
    responses = row["responses"]
    if min_margin > 0 and "scores" not in row:
        raise DataError("rankings", "a margin between pairs needs the judge's scores, and a person's ranking row has "
                        "none; set rankings.pair_margin=0")
    return [
        {"prompt": row["prompt"], "chosen": responses[better], "rejected": responses[worse]}
        for n, tier in enumerate(tiers)
        for better in tier
        for lower in tiers[n + 1 :]
        for worse in lower
        # to SCORE_DECIMALS, as ties are: float noise must not drop a pair that is exactly min_margin apart
        if min_margin <= 0 or round(row["scores"][better] - row["scores"][worse], SCORE_DECIMALS) >= min_margin
    ]


def distinct_texts(answers: Sequence[str]) -> list[str]:
    """The non-empty answers, each once, in order: the same answer twice cannot be ranked against itself."""
    return list(dict.fromkeys(a for a in answers if a.strip()))


def sample_and_judge(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    judge: ScoreFn,
    path: Path,
    *,
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    model_name: str = "",
    dense_weights: str = "auto",
) -> list[dict]:
    """Sample ``k`` answers to each prompt, score them with ``judge`` and append one row per prompt to ``path``.

    Prompts already in ``path`` are skipped, so a killed run resumes where it stopped. Prompts go in chunks
    of ``batch_size // k`` (one ``generate`` call each), and chunk ``i`` samples under seed ``seed + i``:
    a resumed run draws exactly the answers the uninterrupted run would have drawn.

    Args:
        prompts: :class:`~lightalign.data.types.PromptOnly` items (their ``prompt`` is a message list).
        judge: ``(prompts, answers) -> scores``; checked by :func:`~lightalign.eval.hooks.judge_scores`.
        path: The append-only work file; every row holds ``prompt``, ``responses`` (distinct, non-empty),
            ``scores``, ``ranking`` (ties nested), ``model`` and ``sampling`` (the settings).
        dense_weights: ``generation.dense_weights`` (:func:`~lightalign.generation.dense_decoding`).

    Returns:
        Every row of ``path`` (old and new), in file order.
    """
    done = resume_rankings(path)
    per_call = max(1, batch_size // k)
    chunks = [list(prompts[i : i + per_call]) for i in range(0, len(prompts), per_call)]
    sampling = {"k": k, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed}
    todo = sum(prompt_key(p.prompt) not in done for p in prompts)
    if todo < len(prompts):
        print(f"rankings: {len(prompts) - todo} of {len(prompts)} prompts already ranked in {path}; resuming")
    for index, chunk in enumerate(chunks):
        if all(prompt_key(p.prompt) in done for p in chunk):
            continue
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
            torch.manual_seed(seed + index)
            answers = generate_answers(
                model, tokenizer, [p.prompt for p in chunk], num_samples=k, max_new_tokens=max_new_tokens,
                batch_size=len(chunk) * k, temperature=temperature, top_p=top_p,
                desc=f"sampling {k} answers x {len(chunk)} prompts (chunk {index + 1}/{len(chunks)})",
                dense_weights=dense_weights,
            )
        groups = [distinct_texts([a.text for a in answers[n * k : (n + 1) * k]]) for n in range(len(chunk))]
        flat_prompts = [prompt_text(p.prompt) for p, group in zip(chunk, groups, strict=True) for _ in group]
        flat_scores = judge_scores(judge, flat_prompts, [a for group in groups for a in group])
        start = 0
        for item, group in zip(chunk, groups, strict=True):
            scores = flat_scores[start : start + len(group)]
            start += len(group)
            if prompt_key(item.prompt) in done:
                continue
            row = {"prompt": stored_prompt(item.prompt), "responses": group, "scores": scores,
                   "ranking": ranking_from_scores(scores), "model": model_name, "sampling": sampling}
            append_row(path, row)
    return read_ranking_rows(path)


def human_rankings(path: Path, prompts: Sequence[Any]) -> list[dict]:
    """The rows of a ``lightalign rank`` file whose prompt is one of ``prompts`` (all rows if none given).

    Raises:
        DataError: if the file is missing, or none of its rows ranks one of ``prompts``.
    """
    if not path.is_file():
        raise DataError(str(path), "no such rankings file (write one with `lightalign rank`)")
    rows = read_ranking_rows(path)
    wanted = {prompt_key(p.prompt) for p in prompts}
    kept = [row for row in rows if not wanted or prompt_key(row["prompt"]) in wanted]
    if not kept:
        raise DataError(str(path), f"none of its {len(rows)} rankings is for one of the {len(wanted)} prompts of "
                        "data.train; rank those prompts, or point data.train at the prompts you ranked")
    return kept


def has_preference(row: dict) -> bool:
    """Whether a ranking row orders at least two answers (a row where every answer ties says nothing)."""
    return len(row["ranking"]) >= 2
