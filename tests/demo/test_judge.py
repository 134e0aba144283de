"""The gold judge: hand-worked scores, ordering of answer qualities, robustness to junk."""

import random

import pytest

from lightalign.demo import GoldJudge, answer_form, gold_judge, parse_question, reference_answer

JAPAN = "What is the capital of Japan?"


@pytest.mark.parametrize(
    ("prompt", "answer", "expected"),
    [
        (JAPAN, "Tokyo.", 1.0),
        (JAPAN, "The capital of Japan is Tokyo.", 0.875),  # 5 extra words: concise 0.5
        (JAPAN, "tokyo", 0.9),  # well-formed 1/3: no capital letter, no period
        (JAPAN, "Kyoto.", 0.4),  # wrong, but concise and well-formed
        (JAPAN, "Seoul or Tokyo.", 0.35),  # a hedge names a wrong capital first
        (JAPAN, "Tokyo. Tokyo. Tokyo.", 0.475),  # repetition halves 0.95
        (JAPAN, "Tokyo.\nTokyo is the capital.", 0.85),  # two lines, 4 extra words, no repetition
        (JAPAN, "Tokyo is the capital. Tokyo is the capital.", 0.4125),  # (0.6 + 0.075 + 0.15) / 2
        (JAPAN, "", 0.0),
        (JAPAN, " ?! ", 0.0),
        ("What is 7 + 5?", "12.", 1.0),
        ("What is 7 + 5?", "7 + 5 = 12.", 0.95),  # operands do not count as answers
        ("What is 7 + 5?", "7 + 5 = 13.", 0.35),
        ("What is 7 + 5?", "Twelve.", 0.4),  # numbers must be digits
        ("Compute 9 × 4.", "36.", 1.0),
        ("Which is larger, 17 or 23?", "23.", 1.0),
        ("Which is larger, 17 or 23?", "17 or 23.", 0.35),
        ("Which is smaller, 17 or 23?", "17 is smaller than 23.", 0.9),
        ("Translate to French: tree", "Arbre.", 1.0),
        ("Translate to French: tree", "L'arbre.", 0.975),
        ("How do you say tree in Spanish?", "Arbol.", 1.0),  # accents are ignored
        ("What is the opposite of hot?", "Cold.", 1.0),
        ("Give the antonym of hot.", "Warm.", 0.4),
        ("What day comes before Monday?", "Sunday.", 1.0),
        ("What month comes after December?", "The month after December is January.", 0.875),
        ("What is the capital of India?", "New Delhi.", 1.0),
        ("What is the capital of India?", "Delhi.", 0.4),
        ("Name the capital city of the Netherlands.", "Amsterdam.", 1.0),
    ],
)
def test_hand_worked_scores(prompt: str, answer: str, expected: float) -> None:
    assert gold_judge(prompt, answer) == pytest.approx(expected)


def test_quality_order() -> None:
    q = parse_question("Give the antonym of early.")
    concise, verbose, wrong = f"{q.answer}.", q.verbose(), "Fast."
    chatty = f"{q.answer}. I hope this helps! Let me know if you have any other questions."
    scores = [gold_judge(q.prompt, a) for a in (concise, verbose, chatty, wrong, "")]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)


def test_finds_question_inside_chat_template() -> None:
    templated = f"<|im_start|>user\n{JAPAN}<|im_end|>\n<|im_start|>assistant\n"
    assert reference_answer(templated) == "Tokyo."
    assert gold_judge(templated, "Tokyo.") == 1.0


@pytest.mark.parametrize("prompt", ["Hello there", "What is the capital of Atlantis?", "Translate to French: zzz", ""])
def test_non_demo_prompt_raises(prompt: str) -> None:
    with pytest.raises(ValueError, match="not a demo prompt"):
        gold_judge(prompt, "Tokyo.")


def test_never_raises_on_junk_answers() -> None:
    rng = random.Random(0)
    junk = ["", "\x00", "🙂" * 1000, "a" * 100_000, "Tokyo" * 5000, "\n\n.", "..", "ﬁ Ǆ ß İ", "٣٤", "Tokyo..."]
    junk += ["".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(200)) for _ in range(50)]
    for answer in junk:
        assert 0.0 <= gold_judge(JAPAN, answer) <= 1.0


def test_batch_judge() -> None:
    judge = GoldJudge()
    assert judge(["What is 7 + 5?", JAPAN], ["12.", "Paris."]) == [1.0, 0.4]
    with pytest.raises(ValueError):
        judge([JAPAN], [])


@pytest.mark.parametrize(("prompt", "answer", "form"), [
    ("What is the capital of Japan?", "Japan.", "echo"),
    ("What is the capital of Japan?", "Japan is Japan.", "echo"),
    ("What is 10 + 6?", "10.", "echo"),
    ("What is 10 + 6?", "16.", "short"),
    ("Which is larger, 53 or 61?", "The larger number is 61.", "sentence"),
    ("What is the capital of Japan?", "Tokyo, Japan.", "short"),
    ("What is the capital of Japan?", "", "echo"),
])
def test_answer_form(prompt: str, answer: str, form: str) -> None:
    assert answer_form(prompt, answer) == form


def test_a_comparison_answer_never_echoes() -> None:
    # both options are in the question: naming one is an answer, right or wrong, not an echo
    assert answer_form("Which is larger, 53 or 61?", "53.") == "short"
    assert answer_form("Which is larger, 53 or 61?", "61.") == "short"
