"""The rankings stage on tiny-random: k sampled answers per prompt, judged, in the reward stage's format."""

from __future__ import annotations

import json
import shutil

import pytest

from lightalign.cli import main as cli
from lightalign.data import load_preference_splits
from lightalign.rundir import read_log

pytestmark = pytest.mark.slow

K = 3
QUICK = ["model=tiny-random", f"rankings.k={K}", "rankings.num_prompts=6", "rankings.max_new_tokens=6",
         "rankings.batch_size=6", "eval.num_prompts=4", "eval.max_new_tokens=6"]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    assert cli(["run", "sft", "model=tiny-random", "trainer.max_steps=2", "eval.num_prompts=2",
                "eval.max_new_tokens=4", f"hydra.run.dir={out}"]) == 0
    return out


@pytest.fixture(scope="module")
def rankings_run(sft_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("rankings") / "run"
    assert cli(["run", "rankings", *QUICK, f"rankings.sft_adapter={sft_run}", f"hydra.run.dir={out}"]) == 0
    return out


def test_rankings_rank_k_sampled_answers_by_the_judge(rankings_run, sft_run):
    from lightalign.demo import gold_judge

    judged = read_log(rankings_run / "judged.jsonl")
    assert len(judged) == 6
    for row in judged:
        assert 1 <= len(row["responses"]) <= K and len(set(row["responses"])) == len(row["responses"])
        assert row["scores"] == [gold_judge(row["prompt"], r) for r in row["responses"]]
        order = [i for tier in row["ranking"] for i in (tier if isinstance(tier, list) else [tier])]
        assert sorted(order) == list(range(len(row["responses"])))
        ordered = [row["scores"][i] for i in order]
        assert ordered == sorted(ordered, reverse=True)  # best first
        assert row["sampling"]["k"] == K and row["sampling"]["max_new_tokens"] == 6
        assert str(sft_run / "adapter") in row["model"]
    ranked = read_log(rankings_run / "rankings.jsonl")
    assert ranked == [row for row in judged if len(row["ranking"]) >= 2]
    metrics = json.loads((rankings_run / "metrics.json").read_text())
    assert metrics["rankings_prompts"] == 6 and metrics["rankings_ranked"] == len(ranked)
    assert metrics["pass_k"] == K and 0 <= metrics["best_of_k_score"] <= 1
    assert 0 <= metrics["correct_fraction"] <= 1 and "gold_score" in metrics  # greedy, on the held-out prompts
    assert 0 <= metrics["sampled_correct_fraction"] <= metrics["pass_at_k"] <= 1
    assert len(read_log(rankings_run / "samples.jsonl")) == 4
    # the reward stage's data layer reads the file as it is, and pairs.jsonl holds every ranked pair
    if ranked:
        data = load_preference_splits(str(rankings_run / "rankings.jsonl"), None, eval_fraction=0.0)
        pairs = read_log(rankings_run / "pairs.jsonl")
        assert len(data.train) == len(pairs) == metrics["rankings_pairs"]


def test_rankings_resume_skips_finished_prompts_and_reward_starts_from_sft(rankings_run, sft_run, tmp_path,
                                                                            capsys):
    # a second run into the same folder samples nothing new: every prompt is already in judged.jsonl
    before = (rankings_run / "judged.jsonl").read_text()
    assert cli(["run", "rankings", *QUICK, f"rankings.sft_adapter={sft_run}", "rankings.headroom=false",
                f"hydra.run.dir={rankings_run}"]) == 0
    assert (rankings_run / "judged.jsonl").read_text() == before

    # rankings.pair_margin: the same rankings (resumed in a copy, nothing sampled), DPO's pairs only those whose
    # judge scores differ by at least the margin
    margin_run = tmp_path / "margin"
    shutil.copytree(rankings_run, margin_run)
    assert cli(["run", "rankings", *QUICK, f"rankings.sft_adapter={sft_run}", "rankings.headroom=false",
                "rankings.pair_margin=0.3", f"hydra.run.dir={margin_run}"]) == 0
    scores = {(row["prompt"], answer): score for row in read_log(rankings_run / "rankings.jsonl")
              for answer, score in zip(row["responses"], row["scores"], strict=True)}
    kept = read_log(margin_run / "pairs.jsonl")
    metrics = json.loads((margin_run / "metrics.json").read_text())
    assert len(kept) == metrics["rankings_dpo_pairs"] <= metrics["rankings_pairs"]
    assert all(scores[p["prompt"], p["chosen"]] - scores[p["prompt"], p["rejected"]] >= 0.3 - 1e-9 for p in kept)
    assert len(kept) == sum(scores[p["prompt"], p["chosen"]] - scores[p["prompt"], p["rejected"]] >= 0.3 - 1e-9
                            for p in read_log(rankings_run / "pairs.jsonl"))

    # a margin no pair clears (the gold judge scores in [0, 1]) leaves DPO nothing, and the stage says so
    none_run = tmp_path / "none"
    shutil.copytree(rankings_run, none_run)
    capsys.readouterr()
    assert cli(["run", "rankings", *QUICK, f"rankings.sft_adapter={sft_run}", "rankings.headroom=false",
                "rankings.pair_margin=2", f"hydra.run.dir={none_run}"]) == 0
    assert read_log(none_run / "pairs.jsonl") == []
    if metrics["rankings_pairs"]:
        assert "no pair differs by >= 2" in capsys.readouterr().out

    # the reward stage trains on the on-policy rankings, starting from the SFT adapter
    if read_log(rankings_run / "rankings.jsonl"):
        out = tmp_path / "reward"
        assert cli(["run", "reward", "model=tiny-random", f"data.train={rankings_run / 'rankings.jsonl'}",
                    "data.eval_fraction=0", "trainer.max_steps=1", f"reward.init_adapter={sft_run}",
                    f"hydra.run.dir={out}"]) == 0
        assert (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    ("judge_returns", "expected"),
    [(None, "judge GoldJudge raised ZeroDivisionError"), ([float("nan")], "judge GoldJudge returned nan for answer 0"),
     ([], "judge GoldJudge returned 0 scores for")],
    ids=["raises", "nan", "wrong-length"],
)
def test_a_bad_judge_is_a_one_line_error(monkeypatch, tmp_path, capsys, judge_returns, expected):
    from lightalign.demo import judge

    def bad(self, prompts, answers):
        if judge_returns is None:
            raise ZeroDivisionError("boom")
        return judge_returns * len(answers) if judge_returns else []

    monkeypatch.setattr(judge.GoldJudge, "__call__", bad)
    code = cli(["run", "rankings", *QUICK, "rankings.headroom=false", f"hydra.run.dir={tmp_path}"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "lightalign: error:" in line]
    assert code == 2 and len(errors) == 1 and expected in errors[0], err[-800:]
    assert "Traceback" not in err and not (tmp_path / "manifest.json").exists()
