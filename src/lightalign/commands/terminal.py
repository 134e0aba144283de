"""Reading one line of a person's (or a script's) input, for the interactive commands (chat, rank)."""

from __future__ import annotations

from typing import TextIO


def ask(prompt: str, stdin: TextIO, out: TextIO) -> str | None:
    """Show ``prompt``, read one line and return it stripped; ``None`` at the end of input (Ctrl-D).

    A terminal echoes what was typed; input from a pipe is echoed here, so a scripted session's log reads
    like the interactive one.
    """
    out.write(prompt)
    out.flush()
    line = stdin.readline()
    if not line:
        out.write("\n")
        return None
    if not stdin.isatty():
        out.write(line if line.endswith("\n") else line + "\n")
    return line.strip()
