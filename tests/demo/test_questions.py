"""The demo questions: sound word tables, a perfect reference answer for every prompt."""

import random

from lightalign.demo import gold_judge, parse_question, questions, reference_answer


def test_reference_answers() -> None:
    assert reference_answer("What is the capital of Japan?") == "Tokyo."
    assert reference_answer("What is 20 - 7?") == "13."
    assert reference_answer("How do you say cheese in Spanish?") == "Queso."
    assert reference_answer("What day comes after Sunday?") == "Monday."


def test_every_prompt_has_a_perfect_reference_and_a_correct_verbose_answer() -> None:
    for family, prompts in questions.list_prompts(random.Random(0)).items():
        for prompt in prompts[:300]:
            q = parse_question(prompt)
            assert gold_judge(prompt, reference_answer(prompt)) == 1.0, prompt
            assert gold_judge(prompt, q.verbose()) >= 0.75, (family, q.verbose())


def test_tables_are_unambiguous() -> None:
    capitals = [c.lower() for c in questions.CAPITALS.values()]
    assert len(set(capitals)) == len(capitals)
    assert not {c.lower() for c in questions.CAPITALS} & set(capitals)
    for column in range(len(questions.LANGUAGES)):
        words = [w[column] for w in questions.WORDS.values()]
        assert len(set(words)) == len(words)
        assert not set(words) & set(questions.WORDS)  # no translation is itself an English demo word
    assert len(questions.OPPOSITES) == 2 * len(questions._PAIRS)  # each word has exactly one opposite
