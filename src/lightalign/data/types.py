"""One normalised example type per stage kind. Every input format is converted to one of these.

- language modelling (SFT, pretrain): :class:`Conversation` or :class:`PlainText`;
- preference (reward, DPO): :class:`PreferencePair` (rankings expand to pairs sharing a ``group``);
- prompt-only (PPO rollouts, evaluation): :class:`PromptOnly`.

``origin`` is ``"file:line"`` of the row the example came from, so that every later error names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": str}


@dataclass
class Conversation:
    """A dialogue; the loss is on the assistant turns (completion-only)."""

    messages: list[Message]
    origin: str = ""


@dataclass
class PlainText:
    """Raw text for continued pre-training; the loss is on every token."""

    text: str
    origin: str = ""


@dataclass
class PromptOnly:
    """A prompt (all turns up to the answer), for sampling answers."""

    prompt: list[Message]
    origin: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class PreferencePair:
    """Two answers to one prompt, ``chosen`` preferred over ``rejected``.

    ``group`` ties together the K·(K-1)/2 pairs that came from one K-wise ranking (InstructGPT keeps
    them in one batch element); ``weight`` lets a loss give each group equal total weight.
    """

    prompt: list[Message]
    chosen: str
    rejected: str
    origin: str = ""
    group: int | None = None
    weight: float = 1.0


LM_KIND = "lm"
PREFERENCE_KIND = "preference"
PROMPT_KIND = "prompt"
