"""Does the demo show the recipe working? Correctness and gold-judge gains, seed by seed, with paired errors.

    python bench/seed_spread.py --root /tmp/seeds --seeds 0 1 2            # run the main job once per seed
    python bench/seed_spread.py --root /tmp/seeds --seeds 0 1 2 --no-run   # only read the finished runs
    python bench/seed_spread.py --root /tmp/seeds --seeds 0 1 -- jobs=1    # anything after -- goes to the run

For each seed S it runs ``lightalign run full model=smollm2-135m trainer.seed=S hydra.run.dir=ROOT/seed-S``
(the README's main command with another seed: ``trainer.seed`` reaches every stage, so the SFT model, the
rankings' samples, the reward model, PPO's samples and the data order all change; the 128 held-out prompts do
not). A finished seed is skipped by the pipeline itself, so re-running the script only runs what is missing.

Then, per seed, from the run's own report (:func:`lightalign.report.collect_paired`): the correct fraction of
base, SFT, PPO and DPO on the held-out prompts; SFT − base, PPO − SFT and DPO − SFT in correct answers and in
gold-judge score, each paired per prompt (mean ± paired standard error); the SFT model's pass@k (rankings
stage) and the reward model's held-out pairwise accuracy on the on-policy rankings. The issue's targets are
checked per seed: SFT ≥ base in correct answers, PPO and DPO above SFT by more than 2 paired standard errors.
Last, how each model's answers are put (:func:`lightalign.demo.answer_form`: echoes of the question, other short
answers, sentences) and how many of each are right: a stage that drifts towards the short form loses the sentence
that leads a small model to the answer (docs/dpo.md).
Run it alone: two torch processes on the same cores slow each other down.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import emit_result, print_table  # noqa: E402

from lightalign.data.formats import prompt_text  # noqa: E402
from lightalign.demo import answer_form  # noqa: E402
from lightalign.report import PairedDifference, collect_paired, read_sample_rows  # noqa: E402
from lightalign.rundir import METRICS, read_json  # noqa: E402

COMPARISONS = (("sft", "base"), ("ppo", "sft"), ("dpo", "sft"))
FORMS = ("echo", "short", "sentence")


def seed_summary(run_dir: Path) -> dict:
    """The numbers of one seed's run: correct fractions, paired differences, pass@k, reward accuracy."""
    rows = read_sample_rows(run_dir)
    differences = {(d.model, d.baseline, d.field): d for d in collect_paired(run_dir)}
    correct = {model: sum(r["correct"] for r in answers.values()) / len(answers)
               for model, answers in rows.items() if answers and all("correct" in r for r in answers.values())}
    rankings = read_json(run_dir / "rankings" / METRICS) or {}
    reward = read_json(run_dir / "reward" / METRICS) or {}
    return {"correct": correct, "differences": differences, "pass_at_k": rankings.get("pass_at_k"),
            "pass_k": rankings.get("pass_k"), "sft_greedy_correct": rankings.get("correct_fraction"),
            "reward_accuracy": reward.get("pairwise_accuracy"), "prompts": len(rows.get("sft", {})),
            "forms": {model: form_counts(answers.values()) for model, answers in rows.items()}}


def form_counts(answers: Iterable[dict]) -> dict[str, list[int]]:
    """``{form: [answers, correct ones]}`` over one model's sample rows (:func:`lightalign.demo.answer_form`)."""
    counts = {form: [0, 0] for form in FORMS}
    for row in answers:
        prompt = row["prompt"] if isinstance(row["prompt"], str) else prompt_text(row["prompt"])
        count = counts[answer_form(prompt, row["response"])]
        count[0] += 1
        count[1] += int(bool(row.get("correct")))
    return counts


def _cell(d: PairedDifference | None) -> str:
    return "—" if d is None or d.se is None else f"{d.mean:+.3f} ± {d.se:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="one run directory per seed: ROOT/seed-S")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--no-run", action="store_true", help="only read runs that are already there")
    parser.add_argument("overrides", nargs="*", help="more `lightalign run full` overrides (after --)")
    args = parser.parse_args()

    walls: dict[int, float] = {}
    for seed in args.seeds:
        run_dir = args.root / f"seed-{seed}"
        if args.no_run:
            continue
        command = [sys.executable, "-m", "lightalign", "run", "full", f"model={args.model}", f"trainer.seed={seed}",
                   f"hydra.run.dir={run_dir}", *args.overrides]
        print("$", " ".join(command), flush=True)
        began = time.perf_counter()
        if subprocess.run(command, check=False).returncode:
            sys.exit(f"seed {seed}: the pipeline failed; its log is above")
        walls[seed] = time.perf_counter() - began

    summaries = {seed: seed_summary(args.root / f"seed-{seed}") for seed in args.seeds}
    rows, verdicts = [], {}
    for seed, summary in summaries.items():
        correct, diff = summary["correct"], summary["differences"]
        row = [str(seed), str(summary["prompts"])]
        row += [f"{correct[m]:.3f}" if m in correct else "—" for m in ("base", "sft", "ppo", "dpo")]
        row += [_cell(diff.get((m, b, "correct"))) for m, b in COMPARISONS]
        row += [_cell(diff.get((m, b, "gold_score"))) for m, b in COMPARISONS]
        row += [f"{summary['pass_at_k']:.3f}" if summary["pass_at_k"] is not None else "—",
                f"{summary['reward_accuracy']:.3f}" if summary["reward_accuracy"] is not None else "—",
                f"{walls[seed]:.0f}" if seed in walls else "—"]
        rows.append(row)
        for model, baseline in COMPARISONS:
            d = diff.get((model, baseline, "correct"))
            bar = 0.0 if model == "sft" else 2 * (d.se or 0.0) if d else 0.0
            met = d is not None and (d.mean >= 0 if model == "sft" else d.mean > bar)
            verdicts.setdefault(f"{model} vs {baseline}", []).append(met)
    print()
    print_table(["seed", "prompts", "base correct", "sft correct", "ppo correct", "dpo correct",
                 "Δ correct sft−base", "Δ correct ppo−sft", "Δ correct dpo−sft",
                 "Δ gold sft−base", "Δ gold ppo−sft", "Δ gold dpo−sft", "sft pass@k", "RM accuracy", "wall s"], rows)
    print()
    targets = {"sft vs base": "SFT correct ≥ base", "ppo vs sft": "PPO correct > SFT by > 2 SE",
               "dpo vs sft": "DPO correct > SFT by > 2 SE"}
    print_table(["target", "met at seeds", "verdict"],
                [[targets[k], f"{sum(v)}/{len(v)}", "met" if all(v) else "missed"] for k, v in verdicts.items()])
    print()
    print_table(["seed", "model", *(f"{form} (correct)" for form in FORMS)],
                [[str(seed), model, *(f"{n} ({c})" for n, c in (forms[f] for f in FORMS))]
                 for seed, summary in summaries.items() for model, forms in summary["forms"].items()])
    emit_result({
        "seeds": args.seeds, "walls_s": walls,
        "correct": {s: v["correct"] for s, v in summaries.items()},
        "paired": {s: {f"{m}-{b}:{f}": [d.mean, d.se, d.n] for (m, b, f), d in v["differences"].items()}
                   for s, v in summaries.items()},
        "pass_at_k": {s: v["pass_at_k"] for s, v in summaries.items()},
        "reward_accuracy": {s: v["reward_accuracy"] for s, v in summaries.items()},
        "forms": {s: v["forms"] for s, v in summaries.items()},
        "verdicts": {k: all(v) for k, v in verdicts.items()},
    })


if __name__ == "__main__":
    main()
