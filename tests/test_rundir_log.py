"""The shared JSONL training log: append, read back, and trim after a resume point."""

from __future__ import annotations

from lightalign.rundir import append_log, read_log, trim_log


def test_append_read_and_trim(tmp_path):
    path = tmp_path / "logs" / "metrics.jsonl"
    for step in (1, 2, 3):
        append_log(path, "ppo", step, {"score": step / 10})
    append_log(path, "sft", 5, {"loss": 1.0})
    with path.open("a", encoding="utf-8") as out:
        out.write('{"stage": "ppo", "st')  # torn by a kill mid-write
    assert [r["step"] for r in read_log(path)] == [1, 2, 3, 5]
    trim_log(path, "ppo", 1)
    rows = read_log(path)
    # ppo rows after step 1 and the torn line are gone; another stage's rows stay
    assert [(r["stage"], r["step"]) for r in rows] == [("ppo", 1), ("sft", 5)]
    assert rows[0] == {"stage": "ppo", "step": 1, "score": 0.1}
    assert path.read_text(encoding="utf-8").endswith("\n")
