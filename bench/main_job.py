"""The main job's wall time: ``lightalign run full`` (the README's main command) and each of its stages.

    python bench/main_job.py                                  # the demo: SmolLM2-135M, 4-bit, all four stages
    python bench/main_job.py --run-dir /tmp/full -- seed=1    # anything after -- goes to `lightalign run full`
    python bench/main_job.py --model lightalign:tiny-random -- trainer.max_steps=2   # a check of the script

Runs the pipeline once in a child process (a fresh run directory unless ``--run-dir`` names one; a finished
one would skip every stage), times it from the outside, reads each stage's seconds from
``DIR/pipeline.json``, and prints the stage table, the ratio of the total to the 15-minute target, and the
report's model table. Model conversion (once per machine, ~30 s) is done before the clock starts: it is not
part of a run. Run it alone: two torch processes on the same cores slow each other down.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import emit_result, load_warning, print_table  # noqa: E402

TARGET_S = 15 * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="a model= option or a name_or_path")
    parser.add_argument("--run-dir", type=Path, default=None, help="default: a new temporary directory")
    parser.add_argument("overrides", nargs="*", help="more `lightalign run full` overrides (after --)")
    args = parser.parse_args()

    from lightalign.models import resolve_model_path

    model_option = [f"model={args.model}"] if "/" not in args.model and ":" not in args.model else [
        f"model.name_or_path={args.model}"]
    if args.model == "smollm2-135m":
        resolve_model_path("lightalign:smollm2-135m-instruct")  # the one-off GGUF conversion, outside the clock
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="lightalign-main-job-")) / "run"
    warning = load_warning()
    if warning:
        print(warning)
    command = [sys.executable, "-m", "lightalign", "run", "full", *model_option, f"hydra.run.dir={run_dir}",
               *args.overrides]
    print("$", " ".join(command), flush=True)
    began, began_epoch = time.perf_counter(), time.time()
    done = subprocess.run(command, check=False)
    wall = time.perf_counter() - began
    if done.returncode:
        sys.exit(f"the pipeline failed (exit {done.returncode}); its log is above")

    state = json.loads((run_dir / "pipeline.json").read_text())
    # stages may run side by side (jobs): each row says when it started, relative to the first one
    first = min(info.get("started", began_epoch) for info in state["stages"].values())
    rows, spans = [], []
    for name, info in state["stages"].items():
        start, seconds = info.get("started", float("nan")) - first, info.get("seconds", float("nan"))
        rows.append([name, f"{start:.0f}", f"{seconds:.0f}"])
        spans.append(start + seconds)
    rows.append(["(pipeline overhead: composing, report)", "", f"{wall - max(spans):.0f}"])
    rows.append(["total", "", f"{wall:.0f}"])
    print()
    print_table(["stage", "started at (s)", "seconds"], rows)
    print(f"\ntotal {wall / 60:.1f} min = {wall / TARGET_S:.2f}x the 15-minute target "
          f"({'met' if wall <= TARGET_S else 'missed'})")
    report = json.loads((run_dir / "report.json").read_text())
    print(f"report: {run_dir / 'report.md'}")
    emit_result({"wall_s": wall, "stages_s": {k: v.get("seconds") for k, v in state["stages"].items()},
                 "target_ratio": wall / TARGET_S, "report": report})


if __name__ == "__main__":
    main()
