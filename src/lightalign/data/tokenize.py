"""Tokenise normalised examples into ``input_ids`` and ``labels`` (``-100`` = no loss).

Conversations are rendered with the tokenizer's chat template and tokenised without extra special
tokens (the template already holds the BOS it wants: adding one again gives the "double BOS" bug).
Only assistant turns carry labels, and each answer's end-of-turn token is *in* the labels: labels are
built here from the template, never later from ``input_ids != pad_token_id``, so a tokenizer whose pad
token is its EOS (SmolLM2, Llama-3 ...) still learns to stop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from transformers import PreTrainedTokenizerBase

from lightalign.data.types import Conversation, Message, PlainText, PreferencePair, PromptOnly
from lightalign.errors import DataError

IGNORE_INDEX = -100

RowT = TypeVar("RowT")


@dataclass
class TokenizeReport:
    """What happened to the rows: nothing is dropped without being counted here."""

    kept: int = 0
    truncated: int = 0
    skipped: int = 0
    skipped_origins: list[str] = field(default_factory=list)

    def as_metrics(self, prefix: str) -> dict[str, int]:
        return {f"{prefix}_rows": self.kept, f"{prefix}_truncated": self.truncated, f"{prefix}_skipped": self.skipped}


def fit_to_max_length(
    row: RowT,
    length: int,
    *,
    origin: str,
    max_length: int,
    overlong: str,
    truncate: Callable[[RowT], RowT | None],
    report: TokenizeReport,
    message: str | None = None,
) -> RowT | None:
    """``row`` as it is kept under the over-long policy (``data.overlong``), or ``None`` when it is skipped.

    A row of ``length`` <= ``max_length`` is kept unchanged. A longer one raises a :class:`DataError` naming
    ``origin`` (``error``; ``message`` replaces the usual text), is skipped (``skip``) or is cut by ``truncate``
    (``truncate``), which returns ``None`` when nothing useful would be left: the row is then skipped too.
    Every row is counted in ``report``: kept (and truncated) or skipped.

    Example: ``fit_to_max_length([1, 2, 3], 3, origin="f:1", max_length=2, overlong="truncate",
    truncate=lambda ids: ids[:2], report=report)`` gives ``[1, 2]`` and counts one kept, truncated row.
    """
    if length > max_length:
        if overlong == "error":
            raise DataError(origin, message or f"{length} tokens > data.max_length={max_length}; "
                                               "set data.overlong=truncate or data.overlong=skip")
        fitted = None if overlong == "skip" else truncate(row)
        if fitted is None:
            report.skipped += 1
            report.skipped_origins.append(origin)
            return None
        row = fitted
        report.truncated += 1
    report.kept += 1
    return row


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[Message], *, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: list[Message]) -> list[int]:
    """Token ids of a prompt followed by the assistant generation header."""
    text = render_chat(tokenizer, prompt, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def tokenize_conversation(tokenizer: PreTrainedTokenizerBase, conversation: Conversation) -> dict[str, list[int]]:
    """Ids and completion-only labels for a dialogue (every assistant turn is learned).

    Example (ChatML, one turn): ``<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>\\n``
    has labels ``-100`` up to and including ``assistant\\n`` and the ids of ``Hello<|im_end|>\\n`` after.
    """
    messages = conversation.messages
    ids = tokenizer(render_chat(tokenizer, messages, add_generation_prompt=False), add_special_tokens=False)[
        "input_ids"
    ]
    labels = [IGNORE_INDEX] * len(ids)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = encode_prompt(tokenizer, messages[:index])
        through = tokenizer(
            render_chat(tokenizer, messages[: index + 1], add_generation_prompt=False), add_special_tokens=False
        )["input_ids"]
        # Templates may re-render earlier turns slightly differently (e.g. strip reasoning): align on the
        # common prefix with the full rendering rather than assuming exact prefixes.
        start = _common_prefix(before, through)
        end = _common_prefix(through, ids)
        labels[start:end] = ids[start:end]
    return {"input_ids": ids, "labels": labels}


def tokenize_text(tokenizer: PreTrainedTokenizerBase, example: PlainText) -> dict[str, list[int]]:
    """Ids and labels for plain text: loss on every token, EOS appended so documents end."""
    ids = tokenizer(example.text, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": ids, "labels": list(ids)}


def tokenize_lm_examples(
    tokenizer: PreTrainedTokenizerBase,
    examples: Iterable[Conversation | PlainText],
    *,
    max_length: int,
    overlong: str = "error",
) -> tuple[list[dict[str, list[int]]], TokenizeReport]:
    """Tokenise examples, applying the over-long policy (``error``, ``truncate`` or ``skip``).

    A truncated sample that loses all its answer tokens is skipped (and counted): it would teach nothing.
    """

    def truncate(row: dict[str, list[int]]) -> dict[str, list[int]] | None:
        row = {key: value[:max_length] for key, value in row.items()}
        return None if all(label == IGNORE_INDEX for label in row["labels"]) else row

    report = TokenizeReport()
    rows: list[dict[str, list[int]]] = []
    for example in examples:
        if isinstance(example, PlainText):
            row = tokenize_text(tokenizer, example)
        else:
            row = tokenize_conversation(tokenizer, example)
        row = fit_to_max_length(row, len(row["input_ids"]), origin=example.origin, max_length=max_length,
                                overlong=overlong, truncate=truncate, report=report)
        if row is not None:
            rows.append(row)
    return rows, report


# ---- preference pairs (reward, DPO) ----------------------------------------------------------------------


def encode_exchange(tokenizer: PreTrainedTokenizerBase, prompt: list[Message], answer: str) -> list[int]:
    """Ids of a prompt and one assistant answer, rendered with the chat template: what a reward model scores.

    Training (:func:`tokenize_reward_groups`) and scoring (:class:`lightalign.reward_model.RewardModel`) both
    call this, so a reward model sees at inference exactly the text it was trained on.
    """
    messages = [*prompt, {"role": "assistant", "content": answer}]
    return tokenizer(render_chat(tokenizer, messages, add_generation_prompt=False), add_special_tokens=False)[
        "input_ids"
    ]


def keep_last(ids: list[int], max_length: int) -> list[int]:
    """The last ``max_length`` ids: a reward model reads its score at the end of the sequence, so keep the end."""
    return ids[-max_length:] if len(ids) > max_length else ids


def encode_scored_exchange(
    tokenizer: PreTrainedTokenizerBase, prompt: list[Message], answer: str, max_length: int
) -> tuple[list[int], int]:
    """What a reward model scores (:func:`encode_exchange`, the last ``max_length`` ids kept) and the index in
    those ids where the answer starts: where the exchange's rendering leaves the prompt's (tokens may merge
    across the boundary), 0 when truncation cut into the answer."""
    ids = encode_exchange(tokenizer, prompt, answer)
    start = _common_prefix(encode_prompt(tokenizer, prompt), ids)
    cut = max(len(ids) - max_length, 0)
    return ids[cut:], max(start - cut, 0)


def group_reward_pairs(pairs: Iterable[PreferencePair]) -> list[list[PreferencePair]]:
    """The pairs as the reward stage trains on them: a ranking's pairs (one ``group``) together, a lone pair
    alone, in the order each group first appears."""
    groups: dict[tuple, list[PreferencePair]] = {}
    for index, pair in enumerate(pairs):
        key = ("group", pair.group) if pair.group is not None else ("pair", index)
        groups.setdefault(key, []).append(pair)
    return list(groups.values())


def trained_reward_pairs(pairs: Iterable[PreferencePair], report: TokenizeReport) -> list[PreferencePair]:
    """The pairs of the groups :func:`tokenize_reward_groups` kept, ``report`` being its report on ``pairs``:
    what training saw, without the groups ``data.overlong=skip`` left out (a skipped group is reported by its
    first pair's origin, the file and line of its ranking)."""
    skipped = set(report.skipped_origins)
    return [pair for group in group_reward_pairs(pairs) if group[0].origin not in skipped for pair in group]


def tokenize_reward_groups(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Iterable[PreferencePair],
    *,
    max_length: int,
    overlong: str = "error",
) -> tuple[list[dict], TokenizeReport]:
    """One row per group (a ranking, or a lone pair): each distinct answer tokenised once, plus its pairs.

    Example: a ranking ``B > A > C`` of one prompt becomes ::

        {"input_ids": [ids(prompt+B), ids(prompt+A), ids(prompt+C)],
         "chosen_index": [0, 0, 1], "rejected_index": [1, 2, 2], "pair_weight": [1/3, 1/3, 1/3]}

    Over-long sequences: ``error``, ``skip`` the group, or ``truncate`` keeping the *last* ``max_length``
    tokens (the score is read at the end). The report counts groups.
    """

    def truncate(row: dict) -> dict:
        return {**row, "input_ids": [keep_last(ids, max_length) for ids in row["input_ids"]]}

    report = TokenizeReport()
    rows: list[dict] = []
    for members in group_reward_pairs(pairs):
        texts: list[str] = []
        row: dict = {"input_ids": [], "chosen_index": [], "rejected_index": [], "pair_weight": []}
        for pair in members:
            for answer, column in ((pair.chosen, "chosen_index"), (pair.rejected, "rejected_index")):
                if answer not in texts:
                    texts.append(answer)
                    row["input_ids"].append(encode_exchange(tokenizer, pair.prompt, answer))
                row[column].append(texts.index(answer))
            row["pair_weight"].append(pair.weight)
        row = fit_to_max_length(row, max(len(ids) for ids in row["input_ids"]), origin=members[0].origin,
                                max_length=max_length, overlong=overlong, truncate=truncate, report=report)
        if row is not None:
            rows.append(row)
    return rows, report


def tokenize_preference_pairs(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Iterable[PreferencePair],
    *,
    max_length: int,
    overlong: str = "error",
) -> tuple[list[dict[str, list[int]]], TokenizeReport]:
    """``prompt_ids`` (with the assistant header), ``chosen_ids`` and ``rejected_ids`` per pair, for DPO.

    The answers' ids are what follows the prompt in the rendering of the whole exchange (their end-of-turn
    token included, so DPO also learns where an answer stops). ``truncate`` cuts the answers' ends so that
    prompt + answer fits; a pair whose prompt alone leaves no room is skipped and counted.
    """

    def truncate(row: dict[str, list[int]]) -> dict[str, list[int]] | None:
        room = max_length - len(row["prompt_ids"])
        if room < 1:
            return None
        return {**row, "chosen_ids": row["chosen_ids"][:room], "rejected_ids": row["rejected_ids"][:room]}

    report = TokenizeReport()
    rows: list[dict[str, list[int]]] = []
    for pair in pairs:
        prompt_ids = encode_prompt(tokenizer, pair.prompt)
        chosen = encode_exchange(tokenizer, pair.prompt, pair.chosen)
        rejected = encode_exchange(tokenizer, pair.prompt, pair.rejected)
        # Tokens may merge across the prompt/answer boundary: split where the renderings diverge.
        start = min(_common_prefix(prompt_ids, chosen), _common_prefix(prompt_ids, rejected))
        row = {"prompt_ids": prompt_ids[:start], "chosen_ids": chosen[start:], "rejected_ids": rejected[start:]}
        length = start + max(len(row["chosen_ids"]), len(row["rejected_ids"]))
        row = fit_to_max_length(row, length, origin=pair.origin, max_length=max_length, overlong=overlong,
                                truncate=truncate, report=report)
        if row is not None:
            rows.append(row)
    return rows, report


# ---- prompts (PPO rollouts) ------------------------------------------------------------------------------


def tokenize_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Iterable[PromptOnly],
    *,
    max_length: int,
    overlong: str = "error",
) -> tuple[list[PromptOnly], list[list[int]], TokenizeReport]:
    """Ids of each prompt followed by the assistant header (:func:`encode_prompt`), ready to sample from.

    Over-long prompts: ``error``, ``skip``, or ``truncate`` keeping the *last* ``max_length`` tokens (the
    header that asks for the answer is at the end). Returns the kept prompts, their ids and the report.

    Example: ``tokenize_prompts(tok, [PromptOnly([{"role": "user", "content": "Hi"}])], max_length=64)`` gives
    ``([that prompt], [ids of "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n"], report)``.
    """

    def truncate(ids: list[int]) -> list[int]:
        return keep_last(ids, max_length)

    report = TokenizeReport()
    kept: list[PromptOnly] = []
    encoded: list[list[int]] = []
    for prompt in prompts:
        ids = encode_prompt(tokenizer, prompt.prompt)
        ids = fit_to_max_length(ids, len(ids), origin=prompt.origin, max_length=max_length, overlong=overlong,
                                truncate=truncate, report=report,
                                message=f"prompt of {len(ids)} tokens > {max_length} (data.max_length minus the "
                                        "answer's max_new_tokens); set data.overlong=truncate or skip")
        if ids is not None:
            kept.append(prompt)
            encoded.append(ids)
    return kept, encoded, report
