"""Probe pairs: for every held-out prompt, one correct and one wrong answer of the same form."""

from pathlib import Path

import pytest

from lightalign.demo import (
    ProbePair,
    build_echo_pairs,
    build_probe_pairs,
    generate_demo,
    judge_parts,
    parse_question,
)
from lightalign.rundir import read_log


def _form(answer: str) -> tuple[bool, int, int]:
    """Capitalised (or a number), one final period, one line: "Tokyo." and "Étoile." alike."""
    return answer[0].isupper() or answer[0].isdigit(), answer.count("."), answer.count("\n")


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    paths = generate_demo(Path(tmp_path_factory.mktemp("demo")), seed=0, n_sft=1, n_eval=1, n_rank=1)
    return [row["prompt"] for row in read_log(paths["prompts"])]


def test_one_correct_and_one_wrong_answer_of_the_same_form(heldout: list[str]) -> None:
    pairs = build_probe_pairs(heldout, seed=0)
    assert [p.prompt for p in pairs] == heldout
    assert {p.family for p in pairs} == {"capital", "arithmetic", "compare", "translate", "opposite", "sequence"}
    for pair in pairs:
        right, wrong = judge_parts(pair.prompt, pair.correct), judge_parts(pair.prompt, pair.wrong)
        assert right.correct and not wrong.correct, pair
        assert right.score == 1.0 and wrong.well_formed == 1.0 and not wrong.repetitive, pair
        assert _form(pair.correct) == _form(pair.wrong) == (True, 1, 0) and pair.wrong.endswith("."), pair
        assert pair.wrong != pair.correct


def test_same_seed_same_pairs(heldout: list[str]) -> None:
    assert build_probe_pairs(heldout, seed=1) == build_probe_pairs(heldout, seed=1)
    assert build_probe_pairs(heldout, seed=1) != build_probe_pairs(heldout, seed=2)


def test_a_non_demo_prompt_raises() -> None:
    with pytest.raises(ValueError, match="not a demo prompt"):
        build_probe_pairs(["Tell me a joke."])


def test_echo_pairs_set_the_answer_against_the_question_s_own_word(heldout: list[str]) -> None:
    pairs = build_echo_pairs(heldout)
    named = [p for p in heldout if parse_question(p).family in ("capital", "translate", "opposite")]
    assert [p.prompt for p in pairs] == named and {p.family for p in pairs} == {"capital", "translate", "opposite"}
    for pair in pairs:
        assert judge_parts(pair.prompt, pair.correct).correct and not judge_parts(pair.prompt, pair.wrong).correct
        word = pair.wrong.removesuffix(".")
        assert word.lower() in pair.prompt.lower() and word != pair.correct.removesuffix("."), pair
    assert build_echo_pairs(["Name the capital city of Japan.", "What is 7 + 5?"]) == [
        ProbePair("Name the capital city of Japan.", "capital", "Tokyo.", "Japan.")]


def test_sentence_pairs_are_the_same_pairs_as_full_sentences(heldout: list[str]) -> None:
    concise, sentences = build_probe_pairs(heldout, seed=3), build_probe_pairs(heldout, seed=3, form="sentence")
    assert [(p.prompt, p.family) for p in sentences] == [(p.prompt, p.family) for p in concise]
    for short, long in zip(concise, sentences, strict=True):
        q = parse_question(long.prompt)
        assert long.correct == q.verbose() and long.wrong == q.verbose(short.wrong.removesuffix("."))
        right, wrong = judge_parts(long.prompt, long.correct), judge_parts(long.prompt, long.wrong)
        assert right.correct and not wrong.correct, long
        assert len(long.correct.split()) == len(long.wrong.split()) or q.family == "capital", long
    with pytest.raises(ValueError, match="form='bullet' is not one of concise, sentence"):
        build_probe_pairs(heldout, form="bullet")
