"""The ``lightalign`` command.

    lightalign run <stage|recipe.py> [hydra overrides]   run a stage (sft, pretrain, ...) or a copied recipe
    lightalign ls                                        list stages and config options
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from lightalign.paths import conf_dir, recipes_dir

# stage -> (recipe file, primary config). Variants share a recipe (pretrain is SFT on plain text).
STAGES: dict[str, tuple[str, str]] = {
    "sft": ("sft.py", "sft"),
    "pretrain": ("sft.py", "pretrain"),
}


def _fail(message: str) -> int:
    print(f"lightalign: error: {message}", file=sys.stderr)
    return 2


def run_recipe(target: str, overrides: list[str]) -> int:
    """Run a stage's recipe (or a recipe file) in this process, as ``python recipe.py overrides`` would."""
    if target.endswith(".py"):
        recipe, config_args = Path(target), []
        if not recipe.is_file():
            return _fail(f"recipe file {target} does not exist")
    elif target in STAGES:
        filename, config_name = STAGES[target]
        recipe = recipes_dir() / filename
        config_args = ["--config-name", config_name]
    else:
        return _fail(f"unknown stage {target!r}; valid: {', '.join(sorted(STAGES))} (or a recipe .py file)")
    sys.argv = [str(recipe), *config_args, *overrides]
    try:
        runpy.run_path(str(recipe), run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else _fail(exit_.code)
    return 0


def list_options() -> int:
    """Print stages, and every config group with its options."""
    print("stages: " + ", ".join(sorted(STAGES)))
    root = conf_dir()
    for group in sorted(p for p in root.iterdir() if p.is_dir()):
        options = sorted(f.stem for f in group.glob("*.yaml"))
        print(f"{group.name}: {', '.join(options)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lightalign", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a stage or recipe with Hydra overrides")
    run.add_argument("target", help="stage name (" + ", ".join(sorted(STAGES)) + ") or a recipe .py file")
    run.add_argument("overrides", nargs=argparse.REMAINDER, help="Hydra overrides, e.g. trainer.max_steps=2")
    sub.add_parser("ls", help="list stages and config options")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run_recipe(args.target, args.overrides)
    return list_options()


if __name__ == "__main__":
    sys.exit(main())
