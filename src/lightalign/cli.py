"""The ``lightalign`` command.

    lightalign run <stage|pipeline|recipe.py> [overrides]  run a stage (sft, pretrain, reward, dpo, ppo), a
                                                           pipeline (rlhf, full, pipeline/dpo) or a copied recipe
    lightalign report DIR                                  (re)build a pipeline run's report
    lightalign ls                                          list stages, pipelines and config options
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from lightalign.paths import conf_dir, recipes_dir
from lightalign.pipeline import STAGE_RECIPES, pipeline_names

# Stages and pipelines share `lightalign run NAME`; a bare name means the stage when both exist
# (`dpo`), the pipeline is then `pipeline/dpo`.
STAGES = STAGE_RECIPES


def _fail(message: str) -> int:
    print(f"lightalign: error: {message}", file=sys.stderr)
    return 2


def run_recipe(target: str, overrides: list[str]) -> int:
    """Run a stage's recipe (or a recipe file) in this process, as ``python recipe.py overrides`` would."""
    if target.endswith(".py"):
        recipe, config_args = Path(target), []
        if not recipe.is_file():
            return _fail(f"recipe file {target} does not exist")
    else:
        filename, config_name = STAGES[target]
        recipe = recipes_dir() / filename
        config_args = ["--config-name", config_name]
    sys.argv = [str(recipe), *config_args, *overrides]
    try:
        runpy.run_path(str(recipe), run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else _fail(exit_.code)
    return 0


def run_pipeline_command(name: str, overrides: list[str]) -> int:
    from lightalign.errors import LightalignError
    from lightalign.pipeline import run_pipeline

    run_dir = next((Path(o.split("=", 1)[1]) for o in overrides if o.startswith("hydra.run.dir=")), None)
    try:
        run_pipeline(name, overrides, run_dir)
    except LightalignError as err:
        return _fail(str(err))
    return 0


def run_command(target: str, overrides: list[str]) -> int:
    if target.endswith(".py") or target in STAGES:
        return run_recipe(target, overrides)
    pipeline = target.removeprefix("pipeline/")
    if pipeline in pipeline_names():
        return run_pipeline_command(pipeline, overrides)
    return _fail(
        f"unknown stage or pipeline {target!r}; stages: {', '.join(STAGES)}; "
        f"pipelines: {', '.join(pipeline_names())} (or a recipe .py file)"
    )


def list_options() -> int:
    """Print stages, pipelines, and every config group with its options."""
    print("stages: " + ", ".join(STAGES))
    print("pipelines: " + ", ".join(pipeline_names()))
    for group in sorted(p for p in conf_dir().iterdir() if p.is_dir() and p.name != "pipeline"):
        options = sorted(f.stem for f in group.glob("*.yaml"))
        print(f"{group.name}: {', '.join(options)}")
    return 0


def report_command(run_dir: str) -> int:
    from lightalign.report import build_report

    path = Path(run_dir)
    if not path.is_dir():
        return _fail(f"{run_dir} is not a directory")
    report = build_report(path)
    print(report.table_markdown)
    print(f"report: {report.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lightalign", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a stage, a pipeline or a recipe file with Hydra overrides")
    run.add_argument("target", help="stage, pipeline or recipe .py file")
    run.add_argument("overrides", nargs=argparse.REMAINDER, help="Hydra overrides, e.g. trainer.max_steps=2")
    report = sub.add_parser("report", help="(re)build the report of a pipeline run directory")
    report.add_argument("run_dir")
    sub.add_parser("ls", help="list stages, pipelines and config options")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run_command(args.target, args.overrides)
    if args.command == "report":
        return report_command(args.run_dir)
    return list_options()


if __name__ == "__main__":
    sys.exit(main())
