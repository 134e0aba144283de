"""Does the demo show the recipe working? PPO's and DPO's gold-judge gain over SFT, seed by seed, against the
spread between seeds.

    python bench/seed_spread.py --root /tmp/seeds --seeds 0 1 2            # run the main job once per seed
    python bench/seed_spread.py --root /tmp/seeds --seeds 0 1 2 --no-run   # only read the finished runs
    python bench/seed_spread.py --root /tmp/seeds --seeds 0 1 -- jobs=1    # anything after -- goes to the run

For each seed S it runs ``lightalign run full model=smollm2-135m trainer.seed=S hydra.run.dir=ROOT/seed-S``
(the README's main command with another seed: ``trainer.seed`` reaches every stage, so the SFT model, the
reward model, PPO's samples and the data order all change; the 32 held-out prompts do not). A finished seed
is skipped by the pipeline itself, so re-running the script only runs what is missing.

Then, per seed, the gold-judge score of SFT, PPO and DPO on the same 32 prompts and each method's gain over
the SFT model of its own seed (paired per prompt: mean ± standard error over the prompts). Across seeds:
the mean gain, the spread (sample standard deviation over the seeds) of the gain and of each model's score.
The verdict is "met" for a method when its gain is positive for every seed and its mean gain is larger than
every one of those spreads. Run it alone: two torch processes on the same cores slow each other down.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import emit_result, print_table  # noqa: E402

from lightalign.rundir import SAMPLES, read_log  # noqa: E402

MODELS = ("sft", "ppo", "dpo")
METHODS = ("ppo", "dpo")


def per_prompt_gold(run_dir: Path, model: str) -> list[float]:
    return [row["gold_score"] for row in read_log(run_dir / model / SAMPLES)]


def paired_gain(method: list[float], sft: list[float]) -> tuple[float, float]:
    """Mean per-prompt gain and its standard error."""
    diffs = [m - s for m, s in zip(method, sft, strict=True)]
    return statistics.mean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


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

    scores: dict[str, list[float]] = {model: [] for model in MODELS}
    gains: dict[str, list[float]] = {method: [] for method in METHODS}
    rows = []
    for seed in args.seeds:
        run_dir = args.root / f"seed-{seed}"
        gold = {model: per_prompt_gold(run_dir, model) for model in MODELS}
        row = [str(seed)]
        for model in MODELS:
            scores[model].append(statistics.mean(gold[model]))
            row.append(f"{scores[model][-1]:.3f}")
        for method in METHODS:
            mean, error = paired_gain(gold[method], gold["sft"])
            gains[method].append(mean)
            row.append(f"{mean:+.3f} ± {error:.3f}")
        row.append(f"{walls[seed]:.0f}" if seed in walls else "—")
        rows.append(row)
    print()
    print_table(["seed", "sft gold", "ppo gold", "dpo gold", "ppo − sft (paired)", "dpo − sft (paired)", "wall s"],
                rows)

    print()
    summary, verdicts = [], {}
    for method in METHODS:
        spreads = {"gain": spread(gains[method]), "sft": spread(scores["sft"]), method: spread(scores[method])}
        mean_gain = statistics.mean(gains[method])
        met = min(gains[method]) > 0 and all(mean_gain > value for value in spreads.values())
        verdicts[method] = met
        summary.append([method, f"{mean_gain:+.3f}", f"{min(gains[method]):+.3f}", f"{spreads['gain']:.3f}",
                        f"{spreads['sft']:.3f}", f"{spreads[method]:.3f}", "met" if met else "missed"])
    print_table(["method", "mean gain", "smallest gain", "spread of gain", "spread of sft", "spread of method",
                 "beats SFT by more than the seed spread"], summary)
    emit_result({"seeds": args.seeds, "scores": scores, "gains": gains, "walls_s": walls, "verdicts": verdicts})


if __name__ == "__main__":
    main()
