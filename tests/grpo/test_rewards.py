"""GRPO's weighted reward: the sum and its parts, what each part reads, and one-line errors for bad parts."""

from __future__ import annotations

import pytest

from lightalign.demo import GoldJudge
from lightalign.errors import ConfigError, LightalignError, RewardError
from lightalign.grpo.rewards import RewardPart, WeightedReward

PROMPTS = ["What is 7 + 5?", "What is 7 + 5?", "What is the capital of Japan?"]
ANSWERS = ["12.", "The answer is 12, I think, or maybe not at all really.", "Kyoto."]


def test_the_gold_judge_and_its_correctness_part_weighted():
    reward = WeightedReward([RewardPart("correct", GoldJudge(part="correct"), 2.0),
                             RewardPart("gold", GoldJudge(), 0.5)])
    scores = reward.score(PROMPTS, ANSWERS)
    gold = GoldJudge()(PROMPTS, ANSWERS)
    assert scores.parts == {"correct": [1.0, 1.0, 0.0], "gold": gold}  # each part unweighted, kept for the log
    assert scores.total == pytest.approx([2.0 + 0.5 * gold[0], 2.0 + 0.5 * gold[1], 0.5 * gold[2]])
    assert reward(PROMPTS, ANSWERS) == scores.total  # usable as a plain ScoreFn by the eval hooks
    means = scores.means()
    assert means["reward/correct"] == pytest.approx(2 / 3) and means["reward"] == pytest.approx(sum(scores.total) / 3)


def test_each_part_reads_texts_unless_it_accepts_messages():
    seen = {}

    def judge(prompts, answers):
        seen["judge"] = prompts
        return [0.0] * len(answers)

    class Model:
        accepts_messages = True

        def __call__(self, prompts, answers):
            seen["model"] = prompts
            return [1.0] * len(answers)

    dialogue = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "What is 7 + 5?"}]
    WeightedReward([RewardPart("judge", judge), RewardPart("rm", Model())]).score([dialogue], ["12."])
    assert seen == {"judge": ["What is 7 + 5?"], "model": [dialogue]}


def _raises(prompts, answers):
    raise KeyError("no such question")


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (_raises, "reward part 'bad' raised KeyError: 'no such question'"),
        (lambda p, a: [1.0], "reward part 'bad' returned 1 scores for 3 answers"),
        (lambda p, a: [1.0, float("nan"), 0.0], "reward part 'bad' returned nan for answer 1"),
        (lambda p, a: [1.0, "high", 0.0], "reward part 'bad' returned 'high' for answer 1"),
    ],
    ids=["raises", "wrong-length", "nan", "not-a-number"],
)
def test_a_bad_part_is_a_one_line_reward_error_naming_it(fn, message):
    reward = WeightedReward([RewardPart("fine", GoldJudge()), RewardPart("bad", fn)])
    with pytest.raises(RewardError, match=message) as err:
        reward.score(PROMPTS, ANSWERS)
    assert isinstance(err.value, LightalignError) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([], "no parts"),
        ([RewardPart("a", GoldJudge()), RewardPart("a", GoldJudge())], "distinct names"),
        ([RewardPart("a", GoldJudge(), float("inf"))], "weight inf is not a finite number"),
    ],
)
def test_bad_reward_lists_are_config_errors(parts, message):
    with pytest.raises(ConfigError, match=message):
        WeightedReward(parts)


def test_gold_judge_part_must_exist():
    with pytest.raises(ConfigError, match="part='corect' is not one of correct, concise"):
        GoldJudge(part="corect")
