"""The pipeline report from a hand-made run directory: the correct column, correct per family, paired differences
with their standard errors worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lightalign.report import build_report, collect_paired, paired_difference

P = ["Q1?", "Q2?", "Q3?", "Q4?"]


def _write(run_dir: Path, stage: str, name: str, rows: list[dict] | dict, torn: bool = False) -> None:
    (run_dir / stage).mkdir(parents=True, exist_ok=True)
    if isinstance(rows, dict):
        text = json.dumps(rows)
    else:
        text = "".join(json.dumps(row) + "\n" for row in rows) + ('{"prompt": "Q5?", "resp' if torn else "")
    (run_dir / stage / name).write_text(text)


def _samples(prompts: list[str], correct: list[int], gold: list[float]) -> list[dict]:
    return [{"prompt": p, "response": f"A{i}.", "correct": bool(c), "family": "capital", "gold_score": g}
            for i, (p, c, g) in enumerate(zip(prompts, correct, gold, strict=True))]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    _write(tmp_path, "sft", "metrics.json", {
        "correct_fraction": 0.5, "base_correct_fraction": 0.25, "gold_score": 0.7, "base_gold_score": 0.5,
        "correct_fraction/capital": 0.5, "base_correct_fraction/capital": 0.25})
    _write(tmp_path, "ppo", "metrics.json", {"correct_fraction": 1.0, "correct_fraction/capital": 1.0,
                                             "sft_correct_fraction": 0.5})
    _write(tmp_path, "dpo", "metrics.json", {"correct_fraction": 0.5, "gold_score": 0.6})
    _write(tmp_path, "sft", "base_samples.jsonl", _samples(P, [0, 1, 0, 0], [0.4, 1.0, 0.4, 0.2]))
    _write(tmp_path, "sft", "samples.jsonl", _samples(P, [1, 1, 0, 0], [1.0, 1.0, 0.4, 0.4]))
    # PPO answered Q1-Q3 and a prompt SFT did not; its file ends in a line torn by a kill
    _write(tmp_path, "ppo", "samples.jsonl", _samples([*P[:3], "Q9?"], [1, 1, 1, 0], [1.0, 1.0, 1.0, 0.2]), torn=True)
    _write(tmp_path, "dpo", "samples.jsonl", _samples(P, [1, 1, 0, 0], [0.9, 0.9, 0.3, 0.3]))
    return tmp_path


def test_paired_differences_by_hand(run_dir: Path) -> None:
    found = {(d.model, d.field): d for d in collect_paired(run_dir)}
    # sft - base, correct: diffs 1 0 0 0 -> mean 0.25, sd sqrt(0.75 / 3) = 0.5, se 0.5 / 2
    d = found[("sft", "correct")]
    assert (d.baseline, d.n, d.mean, d.se, d.verdict) == ("base", 4, 0.25, 0.25, "no clear difference")
    # sft - base, gold: diffs 0.6 0 0 0.2 -> mean 0.2, sd sqrt(0.24 / 3), se sqrt(0.08) / 2
    d = found[("sft", "gold_score")]
    assert (d.mean, d.se) == pytest.approx((0.2, math.sqrt(0.08) / 2))
    # ppo - sft over Q1-Q3 only, correct: diffs 0 0 1 -> mean 1/3, sd sqrt((2/3) / 2), se that / sqrt(3) = 1/3
    d = found[("ppo", "correct")]
    assert (d.n, d.mean, d.se) == (3, pytest.approx(1 / 3), pytest.approx(1 / 3))
    # dpo - sft: the same correct answers (0 +- 0), every gold score 0.1 lower (-0.1 +- 0)
    assert (found[("dpo", "correct")].mean, found[("dpo", "correct")].se) == (0.0, 0.0)
    assert found[("dpo", "correct")].verdict == "no clear difference"
    assert found[("dpo", "gold_score")].mean == pytest.approx(-0.1)
    assert found[("dpo", "gold_score")].verdict == "worse by > 2 SE"


def test_report_has_the_correct_column_families_and_paired_section(run_dir: Path) -> None:
    report = build_report(run_dir)
    assert {m: r["correct_fraction"] for m, r in report.rows.items()} == {"base": 0.25, "sft": 0.5, "ppo": 1.0,
                                                                           "dpo": 0.5}
    text = report.path.read_text()
    assert "| model | correct | gold judge |" in text
    assert "| base | 0.250 | 0.500 |" in text and "| dpo | 0.500 | 0.600 |" in text
    assert "## Correct by question family" in text and "| ppo | 1.000 |" in text
    assert "| sft − base | 4 | +0.250 | 0.250 | no clear difference | +0.200 | 0.141 | no clear difference |" in text
    assert "| ppo − sft | 3 | +0.333 | 0.333 | no clear difference | +0.200 | 0.200 | no clear difference |" in text
    assert "| dpo − sft | 4 | +0.000 | 0.000 | no clear difference | -0.100 | 0.000 | worse by > 2 SE |" in text
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["families"] == {"base": {"capital": 0.25}, "sft": {"capital": 0.5}, "ppo": {"capital": 1.0}}
    assert {(d["model"], d["field"], d["n"], d["verdict"]) for d in saved["paired"]} >= {
        ("sft", "correct", 4, "no clear difference"), ("dpo", "gold_score", 4, "worse by > 2 SE")}


def test_verdicts() -> None:
    better = paired_difference("ppo", "sft", "correct", [(1, 0)] * 7 + [(0, 0)])  # 0.875 +- 0.125
    assert (better.mean, better.se, better.verdict) == (0.875, pytest.approx(0.125), "better by > 2 SE")
    assert paired_difference("ppo", "sft", "correct", [(0, 1)] * 3).verdict == "worse by > 2 SE"  # se 0
    assert paired_difference("ppo", "sft", "correct", [(1, 0)]).verdict == "too few prompts"


def test_a_run_without_samples_has_no_paired_section(tmp_path: Path) -> None:
    _write(tmp_path, "sft", "metrics.json", {"gold_score": 0.7, "base_gold_score": 0.3})
    text = build_report(tmp_path).path.read_text()
    assert "| base | — | 0.300 |" in text
    assert "Paired differences" not in text and "question family" not in text


def test_report_shows_the_headroom_and_the_reward_models_accuracy(run_dir: Path) -> None:
    _write(run_dir, "rankings", "metrics.json", {"correct_fraction": 0.375, "pass_at_k": 0.625, "pass_k": 4.0,
                                                 "rankings_ranked": 60.0, "rankings_pairs": 250,
                                                 "rankings_dpo_pairs": 68.0})
    _write(run_dir, "reward", "metrics.json", {"pairwise_accuracy": 0.8, "base_pairwise_accuracy": 0.5})
    text = build_report(run_dir).path.read_text()
    assert "## Rankings and reward model" in text
    assert "| SFT's k sampled answers: some answer correct (pass@4) | 0.625 |" in text
    assert "| SFT's greedy answers: correct | 0.375 |" in text
    assert "| reward model: held-out pairwise accuracy | 0.800 |" in text
    # counts print as counts, even when metrics.json holds them as floats
    assert "| prompts ranked (on-policy: SFT's own sampled answers) | 60 |" in text
    assert "| DPO's pairs (those with a score gap of at least rankings.pair_margin) | 68 |" in text
    report = json.loads((run_dir / "report.json").read_text())
    assert report["preference_data"]["reward model: held-out pairwise accuracy"] == 0.8


def test_a_grpo_stage_gets_its_row_family_answers_and_comparison_with_sft(tmp_path: Path) -> None:
    # the grpo pipeline: sft -> grpo, nothing else
    _write(tmp_path, "sft", "metrics.json", {"correct_fraction": 0.5, "base_correct_fraction": 0.25,
                                             "correct_fraction/capital": 0.5})
    _write(tmp_path, "sft", "samples.jsonl", _samples(P, [1, 1, 0, 0], [1.0, 1.0, 0.4, 0.4]))
    _write(tmp_path, "grpo", "metrics.json", {"correct_fraction": 0.75, "kl_to_sft": 0.3, "win_rate_gold": 0.6,
                                              "correct_fraction/capital": 0.75})
    _write(tmp_path, "grpo", "samples.jsonl", _samples(P, [1, 1, 1, 0], [1.0, 1.0, 1.0, 0.4]))
    report = build_report(tmp_path)
    assert report.rows["grpo"]["correct_fraction"] == 0.75 and report.rows["grpo"]["kl_to_sft"] == 0.3
    text = report.path.read_text()
    assert "| grpo | 0.750 |" in text
    # grpo - sft, correct: diffs 0 0 1 0 -> mean 0.25, sd 0.5, se 0.25
    assert "| grpo − sft | 4 | +0.250 | 0.250 | no clear difference |" in text
    assert "| prompt | sft | grpo |" in text  # the answers side by side
    assert json.loads((tmp_path / "report.json").read_text())["families"]["grpo"] == {"capital": 0.75}
