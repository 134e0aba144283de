"""The offline demo task and its gold judge (see :mod:`lightalign.demo.task`, :mod:`lightalign.demo.judge`,
:mod:`lightalign.demo.probe`).

Short factual questions ("What is the capital of Japan?" -> "Tokyo.") whose answer the judge computes
from the prompt alone, so the whole SFT -> reward -> PPO / DPO pipeline runs without a network or
human labels.
"""

from lightalign.demo.judge import GoldJudge, JudgeParts, gold_judge, judge_parts
from lightalign.demo.probe import ProbePair, build_probe_pairs
from lightalign.demo.task import ensure_demo_data, generate_demo, parse_question, reference_answer

__all__ = [
    "GoldJudge",
    "JudgeParts",
    "ProbePair",
    "build_probe_pairs",
    "ensure_demo_data",
    "generate_demo",
    "gold_judge",
    "judge_parts",
    "parse_question",
    "reference_answer",
]
