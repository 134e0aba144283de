"""The demo data set: SFT dialogues, held-out prompts and K-wise rankings of the demo questions, as JSONL.

:func:`generate_demo` draws the splits from :func:`lightalign.demo.questions.list_prompts` and ranks answers
with the gold judge (:mod:`lightalign.demo.judge`); :func:`ensure_demo_data` generates them once into the
cache and returns the paths.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from lightalign.atomic import build_folder_atomically
from lightalign.demo.judge import gold_judge
from lightalign.demo.questions import ENTITY_FAMILIES, Question, list_prompts, parse_question, wrong_answer
from lightalign.paths import lightalign_home

# Boilerplate that real assistants append; the judge's conciseness term makes it cost.
CHATTER = (
    "I hope this helps! Let me know if you have any other questions.",
    "Is there anything else I can help you with?",
    "Feel free to ask if you need more help.",
)
# Fractions of SFT answers that are a full sentence / a bare answer with chatter; the rest are bare answers.
# Mostly full sentences: "The capital of Russia is Moscow." leads the model to the fact, where a bare answer
# makes it name one at once (SFT on mostly bare answers: capitals 1/7 correct, base 4/7; demo v4, 40 prompts).
# The preference stages then have something to remove (the extra words, the chatter) without losing the fact.
SFT_VERBOSE, SFT_CHATTY = 0.6, 0.25


def _take(pools: dict[str, list[str]], n: int) -> list[str]:
    """Take ``n`` prompts round-robin over the families (so each split is balanced), removing them."""
    out: list[str] = []
    while len(out) < n and any(pools.values()):
        for prompts in pools.values():
            if prompts and len(out) < n:
                out.append(prompts.pop())
    return out


def _hold_out(pools: dict[str, list[str]], n: int) -> tuple[list[str], set[str]]:
    """Take ``n`` held-out prompts, balanced over the families, and remove from ``pools`` every prompt about a
    held-out entity (:attr:`Question.entity`), so that no other split names a held-out country, word or pair.

    A family's held-out prompts are whole entities where its quota allows ("cat" in French and in Spanish);
    the prompts of an entity cut by the quota are dropped from every split.

    Returns:
        The held-out prompts, round-robin over the families, and the held-out entities' names (lower case).
    """
    quotas = {family: n // len(pools) + (i < n % len(pools)) for i, family in enumerate(pools)}
    held: dict[str, list[str]] = {}
    names: set[str] = set()
    for family, prompts in pools.items():
        entities = {p: parse_question(p).entity for p in prompts} if family in ENTITY_FAMILIES else {}
        taken: list[str] = []
        for prompt in prompts:
            if len(taken) >= quotas[family]:
                break
            entity = entities.get(prompt, ())
            if prompt not in taken:
                taken += [p for p in prompts if p == prompt or (entity and entities[p] == entity)]
                names.update(name.lower() for name in entity)
        held[family] = taken[: quotas[family]]
        gone = set(taken)
        prompts[:] = [p for p in prompts if p not in gone]
    return _take(held, n), names


def _candidates(q: Question, rng: random.Random, avoid: set[str] = frozenset()) -> list[str]:
    """Answers of graded quality to one question, for rankings: correct or wrong, concise or not; no wrong
    answer names one of ``avoid`` (the held-out entities)."""
    a = q.answer
    wrong = wrong_answer(q, rng, avoid)
    return [
        f"{a}.",
        q.verbose(),
        f"{a}. {a}. {a}.",
        f"{a}. {CHATTER[0]}",
        f"{q.verbose()} {CHATTER[1]}",
        f"{wrong}.",
        f"{wrong}. {CHATTER[0]}",  # chatter costs a wrong answer too: it is the form, not the content, that ranks
        q.verbose(wrong),
        f"{wrong} or {a}.",
    ]


def generate_demo(
    out_dir: Path, seed: int = 0, n_sft: int = 400, n_eval: int = 40, n_heldout: int = 128, n_rank: int = 200,
    k: int = 4,
) -> dict[str, Path]:
    """Write the demo data set as JSONL files in ``out_dir``; the same seed gives byte-identical files.

    Held-out prompts and eval dialogues are disjoint from each other and from everything else; SFT
    dialogues and ranking prompts are drawn independently from the rest (they may share prompts, as
    each feeds a different stage). Held-out capital, translation and opposite prompts ask about countries,
    words and word pairs that no other split names, not even as a wrong answer in a ranking (a correct
    held-out answer is not a memorised training answer); held-out arithmetic, comparison and sequence prompts
    are prompts no other split asks. SFT answers are all correct, but like real demonstrations only some are
    concise: 60% are a full sentence and 25% end with chatty boilerplate (``SFT_VERBOSE``, ``SFT_CHATTY``), so
    SFT teaches the task and only part of the form; the rankings then reward correct and concise answers, which
    is what reward modelling, PPO and DPO can add on top of SFT.

    Args:
        out_dir: Folder to write into (created if missing).
        seed: Seed of every random choice.
        n_sft: SFT dialogues (``sft.jsonl``).
        n_eval: Held-out dialogues for the SFT eval loss (``eval.jsonl``).
        n_heldout: Held-out prompts for generation and judging (``prompts.jsonl``), round-robin over the six
            families, so that its first N prompts are balanced too.
        n_rank: Prompts with ``k`` ranked answers each (``rankings.jsonl``), and from them every
            ``k * (k - 1) / 2`` chosen/rejected pair (``pairs.jsonl``).
        k: Answers per ranking, 2 to 6; they never tie under the gold judge.

    Returns:
        The file paths keyed by ``"sft"``, ``"eval"``, ``"prompts"``, ``"rankings"``, ``"pairs"``.
    """
    if not 2 <= k <= 6:  # the 9 answers of _candidates have at least 6 distinct scores
        raise ValueError(f"k must be between 2 and 6, got {k}")
    rng = random.Random(seed)
    pools = list_prompts(rng)
    heldout, unseen = _hold_out(pools, n_heldout)
    eval_prompts = _take(pools, n_eval)
    # SFT and rankings each get their own order of the remaining prompts: they may share some, not all.
    train_pools = {f: rng.sample(p, len(p)) for f, p in pools.items()}
    sft_prompts, rank_prompts = _take(pools, n_sft), _take(train_pools, n_rank)

    def dialogue(prompt: str) -> dict:
        q = parse_question(prompt)
        draw = rng.random()
        if draw < SFT_VERBOSE:
            answer = q.verbose()
        elif draw < SFT_VERBOSE + SFT_CHATTY:
            answer = f"{q.answer}. {CHATTER[0]}"  # one habit, as one labeler's would be
        else:
            answer = f"{q.answer}."
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}

    rankings, pairs = [], []
    for prompt in rank_prompts:
        pool = _candidates(parse_question(prompt), rng, avoid=unseen)
        rng.shuffle(pool)
        scored: dict[float, str] = {}
        for answer in pool:  # keep the first k answers whose scores differ: the reward stage rejects ties
            if len(scored) < k:
                scored.setdefault(round(gold_judge(prompt, answer), 6), answer)
        responses = list(scored.values())
        ranking = sorted(range(len(responses)), key=lambda i: -gold_judge(prompt, responses[i]))
        rankings.append({"prompt": prompt, "responses": responses, "ranking": ranking})
        pairs += [
            {"prompt": prompt, "chosen": responses[i], "rejected": responses[j]}
            for n, i in enumerate(ranking)
            for j in ranking[n + 1 :]
        ]
    rows = {
        "sft": [dialogue(p) for p in sft_prompts],
        "eval": [dialogue(p) for p in eval_prompts],
        "prompts": [{"prompt": p} for p in heldout],
        "rankings": rankings,
        "pairs": pairs,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, lines in rows.items():
        paths[name] = out_dir / f"{name}.jsonl"
        text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        paths[name].write_text(text, encoding="utf-8")
    return paths


def ensure_demo_data(root: Path | None = None, seed: int = 0) -> dict[str, Path]:
    """Generate the demo data set once (atomically, safe when several processes do it at once) and return its paths.

    Args:
        root: Target folder; default ``$LIGHTALIGN_HOME/data/demo-v6-seed{seed}``.
        seed: Seed passed to :func:`generate_demo`.
    """
    root = Path(root) if root is not None else lightalign_home() / "data" / f"demo-v6-seed{seed}"
    names = ("sft", "eval", "prompts", "rankings", "pairs")
    if not root.is_dir():
        build_folder_atomically(root, lambda folder: generate_demo(folder, seed=seed))
    return {name: root / f"{name}.jsonl" for name in names}
