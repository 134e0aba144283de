"""Progress for long steps that have no countable units: a line with the elapsed time, kept ticking."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm.auto import tqdm


@contextmanager
def elapsed_bar(desc: str, *, interval: float = 0.5, file: TextIO | None = None) -> Iterator[tqdm]:
    """Show ``desc [elapsed, phase]`` while the block runs; set the phase with ``bar.set_postfix_str``.

    A tqdm bar only redraws when it is updated, so a single long call (dequantising, saving) would show a
    frozen clock: a daemon thread redraws it every ``interval`` seconds.

    Example:
        >>> with elapsed_bar("converting") as bar:
        ...     bar.set_postfix_str("weights")
    """
    bar = tqdm(total=None, desc=desc, bar_format="{desc} [{elapsed}{postfix}]", file=file, leave=True)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(interval):
            bar.refresh()

    ticker = threading.Thread(target=tick, name="elapsed-bar", daemon=True)
    ticker.start()
    try:
        yield bar
    finally:
        stop.set()
        ticker.join()
        bar.set_postfix_str("done", refresh=False)
        bar.close()
