"""Ranking files and judged on-policy rankings (lightalign.rankings)."""

from __future__ import annotations

import math

import pytest

from lightalign.data import load_prompt_examples
from lightalign.errors import DataError
from lightalign.eval.hooks import JudgeError, judge_scores
from lightalign.rankings import (
    ranked_pairs,
    ranking_from_scores,
    read_ranking_rows,
    sample_and_judge,
)


def test_ranking_from_scores_orders_best_first_and_ties_equal_scores():
    assert ranking_from_scores([0.4, 1.0, 0.4, 0.9]) == [1, 3, [0, 2]]
    assert ranking_from_scores([0.5, 0.5]) == [[0, 1]]
    assert ranking_from_scores([0.1 + 0.2, 0.3]) == [[0, 1]]  # float noise is not a preference


def test_ranked_pairs_form_no_pair_between_tied_answers():
    row = {"prompt": "p", "responses": ["a", "b", "c", "d"], "ranking": [1, [0, 2], 3]}
    pairs = {(p["chosen"], p["rejected"]) for p in ranked_pairs(row)}
    assert pairs == {("b", "a"), ("b", "c"), ("b", "d"), ("a", "d"), ("c", "d")}


def test_ranked_pairs_with_a_margin_keep_only_pairs_whose_scores_differ_that_much():
    row = {"prompt": "p", "responses": ["a", "b", "c", "d"], "ranking": [0, 1, 2, 3], "scores": [0.9, 0.8, 0.3, 0.2]}
    pairs = {(p["chosen"], p["rejected"]) for p in ranked_pairs(row, min_margin=0.5)}
    assert pairs == {("a", "c"), ("a", "d"), ("b", "c"), ("b", "d")}  # 0.9 vs 0.8 and 0.3 vs 0.2 are left out
    assert len(ranked_pairs(row)) == 6
    with pytest.raises(DataError, match="needs the judge's scores"):
        ranked_pairs({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1]}, min_margin=0.5)


@pytest.mark.parametrize(("returned", "message"), [
    ([1.0], "returned 1 scores for 2 answers"),
    ([1.0, math.nan], "returned nan for answer 1"),
    ([1.0, "x"], "returned 'x' for answer 1"),
    ([True, 1.0], "returned True for answer 0"),
])
def test_judge_scores_refuses_unusable_scores(returned, message):
    with pytest.raises(JudgeError, match=message):
        judge_scores(lambda prompts, answers: returned, ["p", "q"], ["a", "b"])


def test_judge_scores_turns_an_exception_into_one_line():
    def judge(prompts, answers):
        raise KeyError("oops")

    with pytest.raises(JudgeError, match="judge .*judge raised KeyError"):
        judge_scores(judge, ["p"], ["a"])


def test_a_torn_last_line_is_cut_and_complete_rows_stay(tmp_path):
    path = tmp_path / "judged.jsonl"
    path.write_text('{"prompt": "a", "responses": ["x"], "ranking": [0]}\n{"prompt": "b", "resp')
    assert [row["prompt"] for row in read_ranking_rows(path)] == ["a"]
    assert path.read_text().endswith("[0]}\n")


def test_a_resumed_run_draws_what_the_uninterrupted_run_drew(tiny_tokenizer, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from lightalign.demo import GoldJudge

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = load_prompt_examples("demo:prompts", limit=6)
    settings = dict(k=3, temperature=1.0, top_p=1.0, max_new_tokens=5, batch_size=6, seed=7)
    whole = sample_and_judge(model, tiny_tokenizer, prompts, GoldJudge(), tmp_path / "whole.jsonl", **settings)
    assert len(whole) == 6

    calls = {"n": 0}

    def dies_on_second_chunk(prompts, answers):  # a crash after the first chunk was written
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return GoldJudge()(prompts, answers)

    path = tmp_path / "resumed.jsonl"
    with pytest.raises(JudgeError):
        sample_and_judge(model, tiny_tokenizer, prompts, dies_on_second_chunk, path, **settings)
    assert len(read_ranking_rows(path)) == 2  # the first chunk (6 answers / k = 2 prompts) survived
    resumed = sample_and_judge(model, tiny_tokenizer, prompts, GoldJudge(), path, **settings)
    assert resumed == whole
