"""``lightalign chat``: talk to a trained stage in the terminal, tokens streamed as they are generated.

    lightalign chat outputs/sft/2025-01-01_12-00-00          # base + adapter, loaded as the stage trained it
    lightalign chat lightalign:smollm2-135m-instruct          # the base model alone, for comparison
    echo "What is the capital of Japan?" | lightalign chat DIR   # one-shot: the answer on stdout

In the terminal: ``/reset`` forgets the conversation, ``/quit`` (or Ctrl-D) leaves. With stdin not a terminal,
the whole of stdin is one message and the answer is printed once (``--interactive`` keeps the turn-by-turn
loop, reading one message per line, for scripts that drive it).
"""

from __future__ import annotations

from typing import TextIO

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TextStreamer

from lightalign.commands.terminal import ask
from lightalign.data.tokenize import encode_prompt
from lightalign.data.types import Message
from lightalign.generation import dense_decoding, stop_token_ids

HELP = "/reset forgets the conversation, /quit (or Ctrl-D) leaves"


class _Streamer(TextStreamer):
    """transformers' TextStreamer, writing to a chosen stream (TextStreamer prints to stdout)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, out: TextIO) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out = out

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.out.write(text + ("\n" if stream_end else ""))
        self.out.flush()


class ChatSession:
    """A conversation with one model: the history, and how each answer is sampled.

    Args:
        temperature: 0 answers greedily (the same answer every time).
        max_context: the history is cut, oldest exchange first, to keep prompt + answer under this many tokens.
        dense_weights: how each answer decodes (:func:`~lightalign.generation.dense_decoding`).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, system: str | None = None,
                 max_new_tokens: int = 256, temperature: float = 0.7, top_p: float = 0.9,
                 max_context: int = 2048, dense_weights: str = "auto") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.max_context = max_context
        self.dense_weights = dense_weights
        self.history: list[Message] = []
        self.reset()

    def reset(self) -> None:
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def _prompt_ids(self) -> list[int]:
        ids = encode_prompt(self.tokenizer, self.history)
        first = 1 if self.system else 0
        # Drop whole exchanges (user + assistant) from the front, never the new message itself.
        while len(ids) + self.max_new_tokens > self.max_context and len(self.history) > first + 1:
            del self.history[first : first + 2]
            ids = encode_prompt(self.tokenizer, self.history)
        return ids

    @torch.no_grad()
    def reply(self, message: str, out: TextIO) -> str:
        """Add ``message``, stream the answer to ``out``, remember the answer and return it."""
        self.history.append({"role": "user", "content": message})
        ids = self._prompt_ids()
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        sampling = self.temperature > 0
        stops = stop_token_ids(self.tokenizer)
        with dense_decoding(self.model, self.dense_weights):
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=self.max_new_tokens,
                do_sample=sampling,
                temperature=self.temperature if sampling else None,
                top_p=self.top_p if sampling else None,
                eos_token_id=stops,
                pad_token_id=self.tokenizer.pad_token_id,
                streamer=_Streamer(self.tokenizer, out),
            )[0, len(ids) :].tolist()
        cut = next((i for i, token in enumerate(output) if token in stops), len(output))
        answer = self.tokenizer.decode(output[:cut], skip_special_tokens=True).strip()
        self.history.append({"role": "assistant", "content": answer})
        return answer


def chat_loop(session: ChatSession, stdin: TextIO, out: TextIO, *, prompt: str = "you> ") -> int:
    """Read one message per line until ``/quit`` or end of input; returns the number of answers given."""
    answers = 0
    while True:
        message = ask(prompt, stdin, out)
        if message is None:  # Ctrl-D / the end of a script's input
            return answers
        if not message:
            continue
        if message in ("/quit", "/exit"):
            return answers
        if message == "/reset":
            session.reset()
            out.write("(conversation reset)\n")
            continue
        if message.startswith("/"):
            out.write(f"(unknown command {message}; {HELP})\n")
            continue
        out.write("bot> ")
        session.reply(message, out)
        answers += 1


def chat_once(session: ChatSession, stdin: TextIO, out: TextIO) -> str:
    """Answer the whole of ``stdin`` as one message, streamed to ``out``."""
    message = stdin.read().strip()
    if not message:
        raise ValueError("no message on stdin")
    return session.reply(message, out)
