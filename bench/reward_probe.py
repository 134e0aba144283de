"""Does the reward model read correctness, or only form? Each held-out demo prompt's correct concise answer
against a wrong answer of the same form, scored by a trained reward stage.

    python bench/reward_probe.py RUN/reward                      # the demo's held-out prompts (data seed 0)
    python bench/reward_probe.py RUN/reward --seed 1             # demo data and wrong answers of seed 1
    python bench/reward_probe.py RUN/reward --prompts FILE --limit 32

For each prompt, :func:`lightalign.demo.build_probe_pairs` gives the correct concise answer ("Tokyo.") and a
wrong one of its question family in the same form (another capital "Seoul.", a near-miss number, the other
option of a comparison); :class:`lightalign.reward_model.RewardModel` scores both. Printed per family and
overall: the pairs, the fraction where the correct answer scores higher (a tie is not higher) and the mean
margin (correct minus wrong). A reward model that reads only length and punctuation sits near 0.5; the target of
issue 14 is at least 0.90 overall. The last line is the result as JSON (``BENCH-RESULT {...}``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import emit_result, print_table  # noqa: E402

from lightalign.data.formats import prompt_text  # noqa: E402
from lightalign.data.loading import load_prompt_examples  # noqa: E402
from lightalign.demo import ProbePair, build_probe_pairs, ensure_demo_data  # noqa: E402
from lightalign.reward_model import RewardModel  # noqa: E402


def probe(reward: RewardModel, pairs: list[ProbePair]) -> dict[str, dict[str, float]]:
    """Per family and ``"all"``: ``pairs``, ``correct_higher`` (fraction) and ``mean_margin``."""
    prompts = [p.prompt for p in pairs]
    scores = reward.score(prompts + prompts, [p.correct for p in pairs] + [p.wrong for p in pairs])
    margins = [c - w for c, w in zip(scores[: len(pairs)], scores[len(pairs) :], strict=True)]
    groups: dict[str, list[float]] = {}
    for pair, margin in zip(pairs, margins, strict=True):
        groups.setdefault(pair.family, []).append(margin)
    groups = {**dict(sorted(groups.items())), "all": margins}
    return {family: {"pairs": len(m), "correct_higher": sum(x > 0 for x in m) / len(m),
                     "mean_margin": statistics.fmean(m)} for family, m in groups.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reward_dir", type=Path, help="a reward stage's run directory (or its adapter/ folder)")
    parser.add_argument("--seed", type=int, default=0, help="demo data seed, also the seed of the wrong answers")
    parser.add_argument("--prompts", help="another source of demo prompts (default: the demo's held-out prompts)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N prompts")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    source = args.prompts or str(ensure_demo_data(seed=args.seed)["prompts"])
    prompts = [prompt_text(p.prompt) for p in load_prompt_examples(source, limit=args.limit)]
    pairs = build_probe_pairs(prompts, seed=args.seed)
    reward = RewardModel.load(args.reward_dir, batch_size=args.batch_size)
    result = probe(reward, pairs)
    print(f"reward model: {args.reward_dir}; prompts: {source} ({len(pairs)})")
    print_table(["family", "pairs", "correct scored higher", "mean margin"],
                [[family, r["pairs"], r["correct_higher"], r["mean_margin"]] for family, r in result.items()])
    emit_result({"reward_dir": str(args.reward_dir), "prompts": source, "seed": args.seed, "families": result})


if __name__ == "__main__":
    main()
