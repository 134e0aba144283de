"""Does the reward model read correctness, or only form? Each held-out demo prompt's correct concise answer
against a wrong answer of the same form, scored by a trained reward stage.

    python bench/reward_probe.py RUN/reward                      # the demo's held-out prompts (data seed 0)
    python bench/reward_probe.py RUN/reward --seed 1             # demo data and wrong answers of seed 1
    python bench/reward_probe.py RUN/reward --prompts FILE --limit 32
    python bench/reward_probe.py RUN/reward --likelihood RUN/sft   # also: does the SFT model's own likelihood?
    python bench/reward_probe.py RUN/reward --echo               # also: the correct answer against an echo
    python bench/reward_probe.py RUN/reward --sentences          # also: the same pairs as full sentences

For each prompt, :func:`lightalign.demo.build_probe_pairs` gives the correct concise answer ("Tokyo.") and a
wrong one of its question family in the same form (another capital "Seoul.", a near-miss number, the other
option of a comparison); :class:`lightalign.reward_model.RewardModel` scores both (with the likelihood mix
when the reward stage fitted one: ``reward.likelihood=fit``, :mod:`lightalign.score_mix`). Printed per family and
overall: the pairs, the fraction where the correct answer scores higher (a tie is not higher) and the mean
margin (correct minus wrong). A reward model that reads only length and punctuation sits near 0.5; the target of
issue 14 is at least 0.90 overall. The last line is the result as JSON (``BENCH-RESULT {...}``).

``--likelihood MODEL`` (a stage's run directory, its adapter/ folder, or ``base``) scores the same pairs a second
way: each answer's mean log-probability per token under that causal LM (the reward model's 4-bit base, plus the
adapter). It says whether the knowledge a probe asks for is in the model at all: if the SFT model's likelihood
ranks the correct answer first far more often than the reward model does, the reward model has not learned to
read what its own trunk knows.

``--sentences`` adds the same pairs (the same wrong answers) in the form the SFT model mostly answers in, a full
sentence ("The capital of Japan is Tokyo." against "... is Seoul."; ``build_probe_pairs(form="sentence")``): a
reward model trained on the SFT model's own answers has seen that form far more often than the concise one.

``--echo`` adds another set (:func:`lightalign.demo.build_echo_pairs`): each prompt about a named entity, its
correct answer against the question's own word echoed ("Japan." for the capital of Japan): the answer a policy
falls back to when a reward pays for what is easy to say (copying the question is likely). A reward model that
reads correctness scores the echo lower.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import emit_result, print_table  # noqa: E402

from lightalign.data.formats import prompt_text  # noqa: E402
from lightalign.data.loading import load_prompt_examples  # noqa: E402
from lightalign.data.tokenize import tokenize_preference_pairs  # noqa: E402
from lightalign.data.types import PreferencePair  # noqa: E402
from lightalign.demo import ProbePair, build_echo_pairs, build_probe_pairs, ensure_demo_data  # noqa: E402
from lightalign.eval.preference import completion_logprobs  # noqa: E402
from lightalign.models.trained import ModelSource, load_model_source, resolve_model_source  # noqa: E402
from lightalign.reward_model import RewardModel  # noqa: E402
from lightalign.rundir import StageRun  # noqa: E402


def reward_margins(reward_dir: Path, pairs: list[ProbePair], batch_size: int) -> list[float]:
    """The reward model's score of each pair's correct answer minus its wrong one's."""
    prompts = [p.prompt for p in pairs]
    scores = RewardModel.load(reward_dir, batch_size=batch_size).score(
        prompts + prompts, [p.correct for p in pairs] + [p.wrong for p in pairs])
    return [c - w for c, w in zip(scores[: len(pairs)], scores[len(pairs) :], strict=True)]


def likelihood_margins(model: str, reward_dir: Path, pairs: list[ProbePair], batch_size: int) -> list[float]:
    """Each pair's correct answer's mean log-probability per token minus its wrong one's, under ``model`` (a
    stage's output, loaded as it trained) or, for ``"base"``, the reward stage's base without any adapter.

    The answers are split off their prompts and scored as DPO's evaluation scores them
    (:func:`~lightalign.data.tokenize.tokenize_preference_pairs`, :func:`~lightalign.eval.preference.
    completion_logprobs`: the chat template's end of turn counts as an answer token).
    """
    reward_run = StageRun.open(reward_dir, stage="reward")
    if model == "base":
        source = replace(ModelSource.of_run(reward_run), adapter=None, head="causal-lm", stage=None)
    else:
        source = resolve_model_source(model)
    lm, tokenizer = load_model_source(source)
    rows, _ = tokenize_preference_pairs(
        tokenizer, [PreferencePair([{"role": "user", "content": p.prompt}], p.correct, p.wrong) for p in pairs],
        max_length=reward_run.setting("data.max_length"))  # overlong: an error, so rows stay aligned with pairs
    correct, wrong = completion_logprobs(lm, rows, tokenizer.pad_token_id, batch_size=batch_size)
    return [c / len(row["chosen_ids"]) - w / len(row["rejected_ids"])
            for c, w, row in zip(correct, wrong, rows, strict=True)]


def probe(pairs: list[ProbePair], margins: list[float]) -> dict[str, dict[str, float]]:
    """Per family and ``"all"``: ``pairs``, ``correct_higher`` (fraction of margins > 0) and ``mean_margin``."""
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
    parser.add_argument("--echo", action="store_true", help="also: the correct answer against the question's own "
                        "word echoed (capitals, translations, opposites)")
    parser.add_argument("--sentences", action="store_true", help="also: the same pairs as full sentences")
    parser.add_argument("--likelihood", metavar="MODEL", help="also score by the mean answer log-probability under "
                        "MODEL: a stage's run directory or adapter/ on the reward model's base, or 'base'")
    args = parser.parse_args()

    source = args.prompts or str(ensure_demo_data(seed=args.seed)["prompts"])
    prompts = [prompt_text(p.prompt) for p in load_prompt_examples(source, limit=args.limit)]
    sets = {"probe": build_probe_pairs(prompts, seed=args.seed)}
    if args.sentences:
        sets["sentence"] = build_probe_pairs(prompts, seed=args.seed, form="sentence")
    if args.echo:
        sets["echo"] = build_echo_pairs(prompts)
    pairs = [pair for members in sets.values() for pair in members]  # one model load scores every set

    def by_set(margins: list[float]) -> dict[str, list[float]]:
        split, start = {}, 0
        for name, members in sets.items():
            split[name], start = margins[start : start + len(members)], start + len(members)
        return split

    readings = {"reward model": by_set(reward_margins(args.reward_dir, pairs, args.batch_size))}
    if args.likelihood:
        readings[f"mean answer log-probability under {args.likelihood}"] = by_set(
            likelihood_margins(args.likelihood, args.reward_dir, pairs, args.batch_size))
    print(f"reward model: {args.reward_dir}; prompts: {source} ({len(prompts)})")
    out: dict = {"reward_dir": str(args.reward_dir), "prompts": source, "seed": args.seed}
    for reading, margins in readings.items():
        for name, members in sets.items():
            result = probe(members, margins[name])
            against = {"probe": "a wrong answer of the same form", "echo": "the question's own word echoed",
                       "sentence": "a wrong answer of the same form, both full sentences"}[name]
            print(f"\n{reading}: the correct answer against {against}")
            print_table(["family", "pairs", "correct scored higher", "mean margin"],
                        [[family, r["pairs"], r["correct_higher"], r["mean_margin"]] for family, r in result.items()])
            key = ("families" if name == "probe" else f"{name}_families")
            out[key if reading == "reward model" else f"likelihood_{key}"] = result
    if args.likelihood:
        out["likelihood_model"] = args.likelihood
    emit_result(out)


if __name__ == "__main__":
    main()
