"""Running under a multi-process launcher (``accelerate launch``, ``torchrun``, ``deepspeed``).

Every process runs the whole recipe; the trainer (through accelerate) shards the batches and all-reduces
the gradients. What a recipe must add is small: strip the ``--local_rank`` argument some launchers
inject (Hydra would reject it as an override), and let rank 0 alone write the run directory.
"""

from __future__ import annotations

import os

LAUNCHER_FLAGS = ("--local_rank", "--local-rank")


def strip_launcher_args(argv: list[str]) -> list[str]:
    """``argv`` without the ``--local_rank=N`` / ``--local-rank N`` arguments launchers inject.

    ``torch.distributed.launch`` and ``deepspeed`` pass the local rank as an argument, ``torchrun`` and
    ``accelerate`` as the ``LOCAL_RANK`` environment variable; the variable is what transformers reads,
    so the argument's value is moved there when the launcher did not set it.

    Example:
        >>> strip_launcher_args(["run", "--local_rank=1", "sft", "trainer.max_steps=2"])
        ['run', 'sft', 'trainer.max_steps=2']
    """
    kept: list[str] = []
    args = iter(argv)
    for arg in args:
        name, has_value, value = arg.partition("=")
        if name not in LAUNCHER_FLAGS:
            kept.append(arg)
            continue
        if not has_value:
            value = next(args, "")
        if value.isdigit():
            os.environ.setdefault("LOCAL_RANK", value)
    return kept


def process_rank() -> int:
    """This process's global rank (0 when not launched as one of several processes)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True in the process that writes the run directory (global rank 0, or the only process)."""
    return process_rank() == 0
