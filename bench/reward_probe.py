"""Does the reward model read correctness, or only form? Each held-out demo prompt's correct concise answer
against a wrong answer of the same form, scored by a trained reward stage.

    python bench/reward_probe.py RUN/reward                      # the demo's held-out prompts (data seed 0)
    python bench/reward_probe.py RUN/reward --seed 1             # demo data and wrong answers of seed 1
    python bench/reward_probe.py RUN/reward --prompts FILE --limit 32
    python bench/reward_probe.py RUN/reward --likelihood RUN/sft   # also: does the SFT model's own likelihood?

For each prompt, :func:`lightalign.demo.build_probe_pairs` gives the correct concise answer ("Tokyo.") and a
wrong one of its question family in the same form (another capital "Seoul.", a near-miss number, the other
option of a comparison); :class:`lightalign.reward_model.RewardModel` scores both. Printed per family and
overall: the pairs, the fraction where the correct answer scores higher (a tie is not higher) and the mean
margin (correct minus wrong). A reward model that reads only length and punctuation sits near 0.5; the target of
issue 14 is at least 0.90 overall. The last line is the result as JSON (``BENCH-RESULT {...}``).

``--likelihood MODEL`` (a stage's run directory, its adapter/ folder, or ``base``) scores the same pairs a second
way: each answer's mean log-probability per token under that causal LM (the reward model's 4-bit base, plus the
adapter). It says whether the knowledge a probe asks for is in the model at all: if the SFT model's likelihood
ranks the correct answer first far more often than the reward model does, the reward model has not learned to
read what its own trunk knows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from harness import emit_result, print_table  # noqa: E402

from lightalign.data.collators import pad_lm  # noqa: E402
from lightalign.data.formats import prompt_text  # noqa: E402
from lightalign.data.loading import load_prompt_examples  # noqa: E402
from lightalign.data.tokenize import IGNORE_INDEX, encode_exchange, encode_prompt  # noqa: E402
from lightalign.demo import ProbePair, build_probe_pairs, ensure_demo_data  # noqa: E402
from lightalign.models.logprobs import causal_lm_label_logprobs  # noqa: E402
from lightalign.models.trained import ModelSource, load_model_source, resolve_model_source  # noqa: E402
from lightalign.reward_model import RewardModel  # noqa: E402
from lightalign.rundir import StageRun  # noqa: E402


def mean_answer_logprobs(model: torch.nn.Module, tokenizer, prompts: list[str], answers: list[str],
                         batch_size: int) -> list[float]:
    """Each answer's mean log-probability per token (its chat-template end included) after its prompt."""
    rows = []
    for prompt, answer in zip(prompts, answers, strict=True):
        messages = [{"role": "user", "content": prompt}]
        start, ids = len(encode_prompt(tokenizer, messages)), encode_exchange(tokenizer, messages, answer)
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * start + ids[start:]})
    scores: list[float] = []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = pad_lm(rows[i : i + batch_size], tokenizer.pad_token_id)
            logprobs = causal_lm_label_logprobs(model, batch["input_ids"], batch["labels"],
                                                attention_mask=batch["attention_mask"])
            counts = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(-1)
            scores += (logprobs.sum(-1) / counts).tolist()
    return scores


def likelihood_scorer(model: str, reward_dir: Path, batch_size: int):
    """``(prompts, answers) -> scores``: mean answer log-probability under ``model`` (a stage's output, loaded as
    it trained) or, for ``"base"``, under the reward stage's base model without any adapter."""
    if model == "base":
        source = replace(ModelSource.of_run(StageRun.open(reward_dir, stage="reward")), adapter=None,
                         head="causal-lm", stage=None)
    else:
        source = resolve_model_source(model)
    lm, tokenizer = load_model_source(source)
    lm.eval()
    return lambda prompts, answers: mean_answer_logprobs(lm, tokenizer, prompts, answers, batch_size)


def probe(score, pairs: list[ProbePair]) -> dict[str, dict[str, float]]:
    """Per family and ``"all"``: ``pairs``, ``correct_higher`` (fraction) and ``mean_margin``.

    ``score(prompts, answers) -> scores``: e.g. :meth:`RewardModel.score`.
    """
    prompts = [p.prompt for p in pairs]
    scores = score(prompts + prompts, [p.correct for p in pairs] + [p.wrong for p in pairs])
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
    parser.add_argument("--likelihood", metavar="MODEL", help="also score by the mean answer log-probability under "
                        "MODEL: a stage's run directory or adapter/ on the reward model's base, or 'base'")
    args = parser.parse_args()

    source = args.prompts or str(ensure_demo_data(seed=args.seed)["prompts"])
    prompts = [prompt_text(p.prompt) for p in load_prompt_examples(source, limit=args.limit)]
    pairs = build_probe_pairs(prompts, seed=args.seed)
    result = probe(RewardModel.load(args.reward_dir, batch_size=args.batch_size).score, pairs)
    print(f"reward model: {args.reward_dir}; prompts: {source} ({len(pairs)})")
    print_table(["family", "pairs", "correct scored higher", "mean margin"],
                [[family, r["pairs"], r["correct_higher"], r["mean_margin"]] for family, r in result.items()])
    out = {"reward_dir": str(args.reward_dir), "prompts": source, "seed": args.seed, "families": result}
    if args.likelihood:
        likely = probe(likelihood_scorer(args.likelihood, args.reward_dir, args.batch_size), pairs)
        print(f"\nthe same pairs by mean answer log-probability under {args.likelihood}")
        print_table(["family", "pairs", "correct more likely", "mean margin (nats/token)"],
                    [[family, r["pairs"], r["correct_higher"], r["mean_margin"]] for family, r in likely.items()])
        out.update(likelihood_model=args.likelihood, likelihood_families=likely)
    emit_result(out)


if __name__ == "__main__":
    main()
