"""The offline demo task and its gold judge.

Short factual questions ("What is the capital of Japan?" -> "Tokyo.") whose answer the judge computes
from the prompt alone, so the whole SFT -> reward -> PPO / DPO pipeline runs without a network or
human labels. The modules import one way:

- :mod:`lightalign.demo.questions`: word tables, prompt phrasings, the parser (imports no other demo module);
- :mod:`lightalign.demo.judge`: the gold judge (imports the questions);
- :mod:`lightalign.demo.dataset`: the JSONL data set and its cache (imports the questions and the judge);
- :mod:`lightalign.demo.probe`: reward-probe pairs (imports the questions).
"""

from lightalign.demo.dataset import ensure_demo_data, generate_demo
from lightalign.demo.judge import GoldJudge, JudgeParts, answer_form, gold_judge, judge_parts
from lightalign.demo.probe import ProbePair, build_echo_pairs, build_probe_pairs
from lightalign.demo.questions import parse_question, reference_answer

__all__ = [
    "GoldJudge",
    "JudgeParts",
    "ProbePair",
    "answer_form",
    "build_echo_pairs",
    "build_probe_pairs",
    "ensure_demo_data",
    "generate_demo",
    "gold_judge",
    "judge_parts",
    "parse_question",
    "reference_answer",
]
