"""Normalise the common dataset formats into the example types of :mod:`lightalign.data.types`.

Language-modelling formats (``format=auto`` detects them by their fields):

===================  ==================================================================
``messages``         ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}``
``conversations``    ShareGPT: ``{"conversations": [{"from": "human"|"gpt", "value": ...}]}``
``prompt_completion`` ``{"prompt": str | messages, "completion": str | messages}``
``alpaca``           ``{"instruction": ..., "input": ... (optional), "output": ...}``
``text``             ``{"text": ...}`` (continued pre-training: loss on every token)
===================  ==================================================================

Prompt-only rows (PPO rollouts, evaluation) accept ``prompt``, ``messages`` (the answer, if any, is
dropped) or Alpaca ``instruction``/``input``.
"""

from __future__ import annotations

from typing import Any

from lightalign.data.types import Conversation, Message, PlainText, PromptOnly
from lightalign.errors import DataError

ROLES = ("system", "user", "assistant", "tool")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def detect_lm_format(row: dict, origin: str) -> str:
    """Name the format of ``row`` from its fields, or raise naming the fields that were expected."""
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "conversations"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "text" in row:
        return "text"
    fields = ", ".join(sorted(row)) or "none"
    raise DataError(
        origin,
        f"unrecognised row (fields: {fields}); expected 'messages', 'conversations', 'prompt'+'completion', "
        "'instruction'+'output' or 'text'",
    )


def require_text(row: dict, key: str, origin: str, *, allow_empty: bool = False) -> str:
    """The string field ``key`` of ``row``; a missing, non-string or (by default) empty value raises."""
    if key not in row or row[key] is None:
        raise DataError(origin, "missing", field=key)
    value = row[key]
    if not isinstance(value, str):
        raise DataError(origin, f"expected a string, got {type(value).__name__}", field=key)
    if not allow_empty and not value.strip():
        raise DataError(origin, "is empty", field=key)
    return value


def to_messages(value: Any, origin: str, field: str) -> list[Message]:
    """Validate a list of ``{"role", "content"}`` messages (ShareGPT ``from``/``value`` accepted)."""
    if not isinstance(value, list) or not value:
        raise DataError(origin, "expected a non-empty list of messages", field=field)
    messages: list[Message] = []
    for index, message in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(message, dict):
            raise DataError(origin, f"expected an object, got {type(message).__name__}", field=where)
        if "from" in message and "role" not in message:
            role = _SHAREGPT_ROLES.get(str(message.get("from")))
            message = {"role": role, "content": message.get("value")}
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(origin, f"role {role!r} is not one of {', '.join(ROLES)}", field=where)
        if not isinstance(content, str):
            raise DataError(origin, f"content must be a string, got {type(content).__name__}", field=where)
        messages.append({"role": role, "content": content})
    return messages


def _as_prompt(value: Any, origin: str, field: str) -> list[Message]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(origin, "is empty", field=field)
        return [{"role": "user", "content": value}]
    return to_messages(value, origin, field)


def alpaca_prompt(row: dict, origin: str) -> str:
    instruction = require_text(row, "instruction", origin)
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise DataError(origin, f"expected a string, got {type(extra).__name__}", field="input")
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction


def to_lm_example(row: dict, origin: str, fmt: str = "auto") -> Conversation | PlainText:
    """Normalise one row for supervised fine-tuning or pre-training; ``fmt`` is ``data.format`` (see above)."""
    if fmt == "auto":
        fmt = detect_lm_format(row, origin)
    if fmt == "text":
        return PlainText(require_text(row, "text", origin), origin)
    if fmt in ("messages", "conversations"):
        messages = to_messages(row.get(fmt), origin, fmt)
    elif fmt == "prompt_completion":
        completion = row.get("completion")
        if completion is not None and not isinstance(completion, str | list):
            raise DataError(origin, f"expected a string or a list of messages, got {type(completion).__name__}",
                            field="completion")
        answer = (
            [{"role": "assistant", "content": completion}]
            if isinstance(completion, str)
            else to_messages(completion, origin, "completion")
        )
        messages = _as_prompt(row.get("prompt"), origin, "prompt") + answer
    else:
        messages = [
            {"role": "user", "content": alpaca_prompt(row, origin)},
            {"role": "assistant", "content": require_text(row, "output", origin)},
        ]
    _check_has_answer(messages, origin, fmt)
    return Conversation(messages, origin)


def _check_has_answer(messages: list[Message], origin: str, field: str) -> None:
    answers = [m for m in messages if m["role"] == "assistant"]
    if not answers:
        raise DataError(origin, "no assistant turn to learn from", field=field)
    if messages[-1]["role"] != "assistant":
        raise DataError(origin, "the last message must be the assistant's answer", field=field)
    for message in answers:
        if not message["content"].strip():
            raise DataError(origin, "an assistant answer is empty", field=field)


def to_prompt_example(row: dict, origin: str) -> PromptOnly:
    """Normalise one row to a prompt for sampling; extra fields are kept in ``meta``."""
    if "prompt" in row:
        prompt = _as_prompt(row["prompt"], origin, "prompt")
    elif "messages" in row:
        prompt = to_messages(row["messages"], origin, "messages")
        while prompt and prompt[-1]["role"] == "assistant":
            prompt = prompt[:-1]
        if not prompt:
            raise DataError(origin, "no user turn", field="messages")
    elif "instruction" in row:
        prompt = [{"role": "user", "content": alpaca_prompt(row, origin)}]
    else:
        fields = ", ".join(sorted(row)) or "none"
        raise DataError(origin, f"no prompt (fields: {fields}); expected 'prompt', 'messages' or 'instruction'")
    meta = {k: v for k, v in row.items() if k not in ("prompt", "messages", "instruction", "input")}
    return PromptOnly(prompt, origin, meta)


def prompt_text(prompt: list[Message]) -> str:
    """The last user turn of a prompt: what a judge or a reward callable reads as "the prompt"."""
    for message in reversed(prompt):
        if message["role"] == "user":
            return message["content"]
    return prompt[-1]["content"]
