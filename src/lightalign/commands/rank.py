"""``lightalign rank``: the human ranking step of the InstructGPT recipe, in the terminal.

    lightalign rank --model outputs/sft/DIR --prompts my_prompts.jsonl --out rankings.jsonl -k 4
    lightalign run reward data=jsonl data.train=rankings.jsonl     # the reward stage reads the file as is

For each prompt it samples ``k`` different answers, shows them numbered, and reads an ordering, best
first: ``2 1 3 4``; ``=`` ties answers (``2 1=3 4``), ``s`` skips the prompt, ``q`` (or Ctrl-D) stops.
Each ranking is appended to the output as one JSON line in the reward stage's ranking format
(``{"prompt", "responses", "ranking"}``, 0-based indices, best first) and fsynced before the next prompt is
shown, so a saved ranking survives a crash or a power cut. Running the same command again resumes: prompts
already in the file are skipped. A line torn by a crash mid-write is the only thing ever dropped.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import TextIO

from lightalign.commands.terminal import ask
from lightalign.data.types import Message, PromptOnly
from lightalign.rankings import (
    Ranking,
    SampleFn,
    append_row,
    distinct_answers,
    prompt_key,
    resume_rankings,
    stored_prompt,
)

HELP = 'order the answers best first, e.g. "2 1 3"; "=" ties ("2 1=3"); s skips this prompt; q stops'


def parse_ordering(text: str, k: int) -> Ranking:
    """Parse ``"2 1=3 4"`` (1-based, best first, ``=`` ties) into the stored form ``[1, [0, 2], 3]``.

    Raises:
        ValueError: unless every answer 1..k appears exactly once.
    """
    ranking: Ranking = []
    seen: list[int] = []
    for tier in text.replace(",", " ").split():
        try:
            members = [int(part) - 1 for part in tier.split("=")]
        except ValueError:
            raise ValueError(f"{tier!r} is not a number; {HELP}") from None
        seen.extend(members)
        ranking.append(members[0] if len(members) == 1 else members)
    if sorted(seen) != list(range(k)):
        raise ValueError(f"name each of the answers 1..{k} exactly once; {HELP}")
    if len(ranking) == 1:
        raise ValueError("all answers tied: that says nothing; rank them, or s to skip")
    return ranking


def _visible(text: str) -> str:
    # The person ranks exactly what is saved: control characters (a stray carriage return could hide the
    # start of an answer) are shown as escapes rather than acted on by the terminal.
    return "".join(ch if ch.isprintable() or ch in "\n\t" else f"\\x{ord(ch):02x}" for ch in text)


def _show(prompt: list[Message], answers: list[str], position: str, out: TextIO) -> None:
    out.write(f"\n=== prompt {position} ===\n")
    for message in prompt:
        out.write(f"{message['role']}: {_visible(message['content'])}\n")
    for number, answer in enumerate(answers, start=1):
        out.write(f"--- [{number}] ---\n{_visible(answer)}\n")


def rank_prompts(prompts: list[PromptOnly], sample: SampleFn, out_path: Path, *, k: int, stdin: TextIO,
                 out: TextIO, seed: int = 0, model_name: str = "") -> dict[str, int]:
    """The ranking loop (see the module docstring); returns counts: ``ranked``, ``skipped``, ``left``, ``total``.

    Each prompt's answers are sampled with a seed derived from the prompt, so a resumed session shows the
    same answers it would have shown the first time.
    """
    done = resume_rankings(out_path)
    todo = [p for p in prompts if prompt_key(p.prompt) not in done]
    counts = {"ranked": 0, "skipped": 0}
    out.write(f"{len(prompts) - len(todo)} of {len(prompts)} prompts already ranked in {out_path}. {HELP}\n")
    stopped = False
    for index, item in enumerate(todo, start=1):
        key = prompt_key(item.prompt)
        answers = distinct_answers(sample, item.prompt, k, seed + zlib.crc32(key.encode()))
        if len(answers) < 2:
            out.write(f"(prompt {index}: fewer than 2 distinct answers; skipped)\n")
            counts["skipped"] += 1
            continue
        _show(item.prompt, answers, f"{index}/{len(todo)}", out)
        while True:
            line = ask("ranking> ", stdin, out)
            reply = (line or "").lower()
            if line is None or reply in ("q", "quit"):
                stopped = True
                break
            if reply in ("s", "skip"):
                counts["skipped"] += 1
                break
            try:
                ranking = parse_ordering(reply, len(answers))
            except ValueError as err:
                out.write(f"({err})\n")
                continue
            row = {"prompt": stored_prompt(item.prompt), "responses": answers, "ranking": ranking}
            if model_name:
                row["model"] = model_name
            append_row(out_path, row)
            counts["ranked"] += 1
            break
        if stopped:
            break
    done = resume_rankings(out_path)
    total = len(done)
    counts.update(total=total, left=sum(prompt_key(p.prompt) not in done for p in prompts))
    out.write(f"\nsaved {counts['ranked']} ranking(s) this session; {out_path} holds {total}; "
              f"{counts['left']} prompt(s) left\n")
    return counts
