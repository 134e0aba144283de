"""``lightalign rank``: orderings parsed, rows saved in the reward stage's format, resumed, never lost."""

from __future__ import annotations

import io
import json
import sys

import pytest

from lightalign.cli import main as cli
from lightalign.commands.rank import parse_ordering, rank_prompts, resume_rankings
from lightalign.data import load_preference_pairs
from lightalign.data.types import PromptOnly


@pytest.mark.parametrize(("text", "k", "expected"), [
    ("2 1 3", 3, [1, 0, 2]),
    ("2,1,3", 3, [1, 0, 2]),
    ("2 1=3 4", 4, [1, [0, 2], 3]),
])
def test_orderings(text, k, expected):
    assert parse_ordering(text, k) == expected


@pytest.mark.parametrize(("text", "k", "message"), [
    ("1 1 2", 3, "exactly once"),
    ("1 2", 3, "exactly once"),
    ("1 2 4", 3, "exactly once"),
    ("a b c", 3, "not a number"),
    ("1=2=3", 3, "all answers tied"),
])
def test_bad_orderings_say_why(text, k, message):
    with pytest.raises(ValueError, match=message):
        parse_ordering(text, k)


def _prompts(n: int) -> list[PromptOnly]:
    return [PromptOnly([{"role": "user", "content": f"Question {i}?"}]) for i in range(n)]


def _sampler(prompt, n, seed):  # distinct answers, a different set per seed
    return [f"{prompt[-1]['content']} answer {seed % 1000}-{i}" for i in range(n)]


def test_rows_resume_and_survive_a_torn_line(tmp_path):
    path = tmp_path / "rankings.jsonl"
    out = io.StringIO()
    counts = rank_prompts(_prompts(3), _sampler, path, k=3, stdin=io.StringIO("2 1 3\nnonsense\n1 3=2\nq\n"), out=out)
    assert counts == {"ranked": 2, "skipped": 0, "total": 2, "left": 1}
    assert "not a number" in out.getvalue()  # a bad line is explained and asked again, not saved
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["prompt"] == "Question 0?" and rows[0]["ranking"] == [1, 0, 2] and rows[1]["ranking"] == [0, [2, 1]]
    saved = path.read_bytes()

    # the reward stage reads the file as is: 3 pairs from the full ranking, 2 from the one with a tie
    pairs, report = load_preference_pairs(str(path))
    assert len(pairs) == 5 and report.tied_pairs == 1
    assert pairs[0].chosen == rows[0]["responses"][1] and pairs[0].rejected == rows[0]["responses"][0]

    with path.open("ab") as file:  # a crash in the middle of writing the next row
        file.write(b'{"prompt": "Question 2?", "respon')
    out = io.StringIO()
    counts = rank_prompts(_prompts(3), _sampler, path, k=3, stdin=io.StringIO("3 2 1\n"), out=out)
    assert "2 of 3 prompts already ranked" in out.getvalue() and "Question 0?" not in out.getvalue()
    assert counts["ranked"] == 1 and counts["left"] == 0
    assert path.read_bytes().startswith(saved)  # earlier rankings untouched, the torn tail gone
    assert len(resume_rankings(path)) == 3


def test_identical_answers_are_resampled_or_the_prompt_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    same = lambda prompt, n, seed: ["same"] * n  # noqa: E731
    counts = rank_prompts(_prompts(1), same, path, k=3, stdin=io.StringIO("1 2\n"), out=io.StringIO())
    assert counts["skipped"] == 1 and not path.exists()
    calls = []

    def two_then_more(prompt, n, seed):
        calls.append(n)
        return ["a", "a", "b"][:n] if len(calls) == 1 else ["c", "b"][:n]

    rank_prompts(_prompts(1), two_then_more, path, k=3, stdin=io.StringIO("3 2 1\n"), out=io.StringIO())
    assert calls == [3, 1] and json.loads(path.read_text())["responses"] == ["a", "b", "c"]


def test_a_corrupt_file_is_one_line_not_overwritten(tmp_path, monkeypatch, capsys):
    path = tmp_path / "r.jsonl"
    path.write_text('{"not": "a ranking"}\n')
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert cli(["rank", "--model", "lightalign:tiny-random", "--out", str(path), "--limit", "1"]) == 2
    assert "r.jsonl:1" in capsys.readouterr().err and path.read_text() == '{"not": "a ranking"}\n'


def test_greedy_decoding_is_refused_before_the_model_loads(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert cli(["rank", "--model", "no-such-model", "--out", str(out), "--temperature", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--temperature must be > 0" in err and not out.exists()


def test_driven_from_a_script_with_a_real_model(tmp_path, monkeypatch, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Name a colour #{i}."}) + "\n" for i in range(3)))
    out = tmp_path / "rankings.jsonl"
    command = ["rank", "--model", "lightalign:tiny-random", "--prompts", str(prompts), "--out", str(out), "-k", "3",
               "--max-new-tokens", "6", "--quant", "none"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("3 1 2\ns\n"))  # rank the first, skip the second, then EOF
    assert cli(command) == 0
    first = capsys.readouterr().out
    assert "=== prompt 1/3 ===" in first and "--- [3] ---" in first
    row = json.loads(out.read_text())
    assert row["prompt"] == "Name a colour #0." and row["ranking"] == [2, 0, 1]
    assert len(set(row["responses"])) == 3
    monkeypatch.setattr(sys, "stdin", io.StringIO("1 2 3\n"))
    assert cli(command) == 0  # resumes: prompt 0 is done, prompt 1 (skipped) comes back first
    assert "1 of 3 prompts already ranked" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Name a colour #0.", "Name a colour #1."] and rows[0] == row


def test_control_characters_are_shown_not_obeyed(tmp_path):
    out = io.StringIO()
    sample = lambda prompt, n, seed: ["hidden\rshown", "two"][:n]  # noqa: E731
    rank_prompts(_prompts(1), sample, tmp_path / "r.jsonl", k=2, stdin=io.StringIO("1 2\n"), out=out)
    assert "hidden\\x0dshown" in out.getvalue()
    assert json.loads((tmp_path / "r.jsonl").read_text())["responses"][0] == "hidden\rshown"  # saved as sampled
