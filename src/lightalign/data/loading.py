"""Load a whole source as normalised examples of one kind (reader + normaliser, errors with origins)."""

from __future__ import annotations

from lightalign.data.formats import to_lm_example, to_prompt_example
from lightalign.data.readers import read_rows
from lightalign.data.types import Conversation, PlainText, PromptOnly
from lightalign.errors import DataError


def load_lm_examples(
    source: str, *, fmt: str = "auto", split: str = "train", limit: int | None = None
) -> list[Conversation | PlainText]:
    """All rows of ``source`` as SFT/pretrain examples; the first bad row raises :class:`DataError`."""
    examples = []
    for row, origin in read_rows(source, split):
        examples.append(to_lm_example(row, origin, fmt))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise DataError(source, "no rows")
    return examples


def load_prompt_examples(source: str, *, split: str = "train", limit: int | None = None) -> list[PromptOnly]:
    """All rows of ``source`` as prompts for sampling (PPO rollouts, evaluation)."""
    examples = []
    for row, origin in read_rows(source, split):
        examples.append(to_prompt_example(row, origin))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise DataError(source, "no rows")
    return examples
