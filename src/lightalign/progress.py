"""Progress of long evaluations and one-off builds, shown the same way wherever stderr goes.

Where stderr goes decides how progress shows (:func:`progress_mode`):

- a terminal: a tqdm bar redrawn in place;
- a regular file (a side-by-side pipeline stage's ``DIR/<stage>/output.log``, or ``2> run.log``): one plain
  line per redraw, at most every :data:`LOG_INTERVAL` seconds plus the first and the last, because a bar
  redrawn with ``\\r`` reads as one endless line in a log file;
- anything else (a pipe, ``/dev/null``): nothing.

``LIGHTALIGN_PROGRESS=bar|lines|off`` overrides the choice (e.g. ``lines`` under ``| tee run.log``).
"""

from __future__ import annotations

import os
import stat
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from typing import Literal, TextIO, TypeVar

from tqdm.auto import tqdm
from tqdm.std import tqdm as plain_tqdm

Mode = Literal["bar", "lines", "off"]
MODES: tuple[Mode, ...] = ("bar", "lines", "off")
LOG_INTERVAL = 30.0  # seconds between two progress lines in a log file
_LINE_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

T = TypeVar("T")
_IN_NOTEBOOK = any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__)  # tqdm.auto picked a widget


def progress_mode(stream: TextIO | None = None) -> Mode:
    """How progress shows on ``stream`` (stderr by default): ``"bar"``, ``"lines"`` or ``"off"``."""
    chosen = os.environ.get("LIGHTALIGN_PROGRESS", "").strip().lower()
    if chosen:
        if chosen not in MODES:
            raise ValueError(f"LIGHTALIGN_PROGRESS={chosen!r}; valid: {', '.join(MODES)}")
        return chosen  # type: ignore[return-value]
    stream = sys.stderr if stream is None else stream
    if _IN_NOTEBOOK or stream.isatty():
        return "bar"
    try:
        is_file = stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):  # io.StringIO and other streams without a file
        return "off"
    return "lines" if is_file else "off"


class _LineWriter:
    """A stream for tqdm that writes each redraw as its own line (tqdm redraws in place with ``\\r``)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started = False

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            # the first line of a bar starts on a fresh line: a training bar may have left its line open
            self.stream.write(("" if self.started else "\n") + line + "\n")
            self.started = True

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int | None, desc: str, *, unit: str = "it", file: TextIO | None = None,
                 mode: Mode | None = None, bar_format: str | None = None) -> tqdm:
    """A tqdm bar on ``file`` (stderr by default) shown as ``mode`` says (:func:`progress_mode` by default).

    In a terminal the bar disappears when closed (as TRL's evaluation bars do); in a log file its last line stays.

    Example:
        >>> with progress_bar(3, "eval loss", unit="row", mode="off") as bar:
        ...     bar.update(3)
    """
    stream = sys.stderr if file is None else file
    mode = progress_mode(stream) if mode is None else mode
    if mode == "lines":
        # position=0: tqdm would otherwise move the cursor with escape codes to stack it under an open bar
        return plain_tqdm(total=total, desc=desc, unit=unit, file=_LineWriter(stream), leave=True, position=0,
                          mininterval=LOG_INTERVAL, maxinterval=max(LOG_INTERVAL, 1.0),
                          bar_format=bar_format or _LINE_FORMAT)
    return tqdm(total=total, desc=desc, unit=unit, file=stream, leave=False, disable=mode == "off",
                bar_format=bar_format)


def iter_batches(items: Sequence[T], batch_size: int, desc: str, *, unit: str = "row",
                 file: TextIO | None = None) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``batch_size`` items, with a :func:`progress_bar` counting the items done.

    Example:
        >>> [list(b) for b in iter_batches([1, 2, 3, 4, 5], 2, "eval")]
        [[1, 2], [3, 4], [5]]
    """
    with closing(progress_bar(len(items), desc, unit=unit, file=file)) as bar:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            yield batch
            bar.update(len(batch))


@contextmanager
def elapsed_bar(desc: str, *, interval: float = 0.5, file: TextIO | None = None,
                mode: Mode | None = None) -> Iterator[tqdm]:
    """Show ``desc [elapsed, phase]`` while the block runs; set the phase with ``bar.set_postfix_str``.

    A tqdm bar only redraws when it is updated, so a single long call (dequantising, saving) would show a
    frozen clock: a daemon thread redraws it every ``interval`` seconds (every :data:`LOG_INTERVAL` in a log).

    Example:
        >>> with elapsed_bar("converting") as bar:
        ...     bar.set_postfix_str("weights")
    """
    stream = sys.stderr if file is None else file
    mode = progress_mode(stream) if mode is None else mode
    bar = progress_bar(None, desc, file=stream, mode=mode, bar_format="{desc} [{elapsed}{postfix}]")
    bar.leave = mode != "off"  # the total time stays on screen
    if mode == "lines":
        interval = max(interval, LOG_INTERVAL)
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
