"""Progress shows as a bar in a terminal, as plain lines in a log file, not at all in a pipe; the elapsed-time
bar keeps ticking during one long call."""

from __future__ import annotations

import io
import os
import time

from lightalign import progress
from lightalign.progress import elapsed_bar, iter_batches, progress_bar, progress_mode


def test_the_clock_is_redrawn_while_the_block_runs():
    out = io.StringIO()
    with elapsed_bar("converting", interval=0.05, file=out, mode="bar") as bar:
        bar.set_postfix_str("weights")
        time.sleep(0.4)  # no update() here: only the ticker redraws
    text = out.getvalue()
    assert text.count("converting [00:00, weights]") >= 3
    assert text.rstrip().endswith("converting [00:00, done]")


def test_where_stderr_goes_decides_how_progress_shows(tmp_path, monkeypatch):
    monkeypatch.delenv("LIGHTALIGN_PROGRESS", raising=False)
    read, write = os.pipe()
    primary, secondary = os.openpty()
    with open(tmp_path / "output.log", "w") as log, os.fdopen(write, "w") as pipe, os.fdopen(secondary, "w") as tty:
        assert (progress_mode(log), progress_mode(pipe), progress_mode(tty)) == ("lines", "off", "bar")
        monkeypatch.setenv("LIGHTALIGN_PROGRESS", "lines")  # e.g. under `| tee run.log`
        assert progress_mode(pipe) == "lines"
    os.close(read)
    os.close(primary)


def test_a_log_file_gets_one_plain_line_per_redraw(tmp_path, monkeypatch):
    monkeypatch.delenv("LIGHTALIGN_PROGRESS", raising=False)
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    path = tmp_path / "output.log"
    with path.open("w") as log:
        log.write("\r 10%|#         | 2/20 [00:01<00:09]")  # a training bar redrawn in place, its line left open
        for batch in iter_batches(list(range(5)), 2, "eval model loss", file=log):
            assert len(batch) <= 2
    with path.open(newline="") as log:  # as written: "\r" kept
        lines = log.read().split("\n")
    assert "\r" not in "".join(lines[1:])
    assert lines[1].startswith("eval model loss:   0% 0/5 [")  # not glued to the training bar's line
    assert [line.split("% ")[1].split(" ")[0] for line in lines[1:-1]][:4] == ["0/5", "2/5", "4/5", "5/5"]


def test_a_pipe_gets_nothing(monkeypatch):
    monkeypatch.delenv("LIGHTALIGN_PROGRESS", raising=False)
    read, write = os.pipe()
    with os.fdopen(write, "w") as pipe:
        with progress_bar(3, "eval", file=pipe) as bar:
            bar.update(3)
    with os.fdopen(read) as out:
        assert out.read() == ""
