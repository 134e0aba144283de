"""The elapsed-time bar keeps ticking during one long call."""

from __future__ import annotations

import io
import time

from lightalign.progress import elapsed_bar


def test_the_clock_is_redrawn_while_the_block_runs():
    out = io.StringIO()
    with elapsed_bar("converting", interval=0.05, file=out) as bar:
        bar.set_postfix_str("weights")
        time.sleep(0.4)  # no update() here: only the ticker redraws
    text = out.getvalue()
    assert text.count("converting [00:00, weights]") >= 3
    assert text.rstrip().endswith("converting [00:00, done]")
