"""The ``lightalign`` command.

    lightalign run <stage|pipeline|recipe.py> [overrides]  run a stage (sft, pretrain, reward, dpo, ppo), a
                                                           pipeline (rlhf, full, pipeline/dpo) or a copied recipe;
                                                           -m sweeps: lightalign run sft -m lora.r=8,16
    lightalign validate <stage|pipeline|recipe.py> [overrides]   compose and check the config, load no model
    lightalign cp <stage|pipeline|group/option> DEST       copy a recipe (+ its configs) to edit and run
    lightalign ls                                          list stages, pipelines and config options
    lightalign chat DIR                                    chat with a trained stage (or a base model)
    lightalign export DIR --out OUT [--merge]              the adapter, or a merged full-precision model
    lightalign rank --model DIR --out rankings.jsonl       rank sampled answers by hand, for the reward stage
    lightalign report DIR                                  (re)build a pipeline run's report or a sweep's table

Multi-process: ``accelerate launch --multi_gpu --num_processes N -m lightalign run sft ...`` or
``torchrun --nproc_per_node N -m lightalign run sft ...``; the ``--local_rank`` argument some launchers
add is removed before Hydra sees it.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lightalign.distributed import strip_launcher_args
from lightalign.errors import EXIT_USER_ERROR, LightalignError
from lightalign.paths import RECIPES_ENV, conf_dir, recipes_dir
from lightalign.pipeline import STAGE_RECIPES, load_stages, pipeline_names

# Stages and pipelines share `lightalign run NAME`; a bare name means the stage when both exist
# (`dpo`), the pipeline is then `pipeline/dpo`.
STAGES = STAGE_RECIPES
QUANT_CHOICES = ("as-trained", "nf4", "none")


def _fail(message: str) -> int:
    print(f"lightalign: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


@contextmanager
def _recipes_from(folder: str | None) -> Iterator[None]:
    """Use the recipes and configs of a folder made by ``lightalign cp`` (also in the stages' subprocesses)."""
    if folder is None:
        yield
        return
    previous = os.environ.get(RECIPES_ENV)
    os.environ[RECIPES_ENV] = str(Path(folder).resolve())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RECIPES_ENV, None)
        else:
            os.environ[RECIPES_ENV] = previous


def _pipeline_name(target: str) -> str | None:
    name = target.removeprefix("pipeline/")
    return name if name in pipeline_names() and (target not in STAGES) else None


def run_recipe(target: str, overrides: list[str]) -> int:
    """Run a stage's recipe (or a recipe file) in this process, as ``python recipe.py overrides`` would."""
    from lightalign.commands.sweep import CALLBACK_OVERRIDE, is_multirun

    if target.endswith(".py"):
        recipe, config_args = Path(target), []
        if not recipe.is_file():
            return _fail(f"recipe file {target} does not exist")
    else:
        filename, config_name = STAGES[target]
        recipe = recipes_dir() / filename
        config_args = ["--config-name", config_name]
        if not recipe.is_file():
            return _fail(f"the {target} recipe ({recipe}) does not exist")
    if is_multirun(overrides):
        if not any(o.startswith("+hydra.callbacks.lightalign_sweep") for o in overrides):
            overrides = [*overrides, CALLBACK_OVERRIDE]  # frees memory between jobs, prints the results table
    else:
        # The config first, as `validate` checks it: a misspelt key, a bad value or a missing data file is one line
        # (Hydra's own error is several, and suggests `+key=` for a typo) before any model is loaded or converted.
        from lightalign.commands.validate import compose_checked, recipe_config_source
        from lightalign.config.compose import ConfigSource

        source, checked = (recipe_config_source(recipe, overrides) if target.endswith(".py")
                           else (ConfigSource(conf_dir(), config_args[1], target), overrides))
        if not any(arg.startswith("-") for arg in checked):  # Hydra's own flags (--config-dir, --cfg ...): its call
            try:
                compose_checked(source, checked)
            except LightalignError as err:
                return _fail(str(err))
    saved_argv = sys.argv
    sys.argv = [str(recipe), *config_args, *overrides]
    try:
        runpy.run_path(str(recipe), run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else _fail(exit_.code)
    finally:
        sys.argv = saved_argv
    return 0


def run_pipeline_command(name: str, overrides: list[str]) -> int:
    from lightalign.commands.sweep import is_multirun
    from lightalign.pipeline import PipelineInterrupted, run_pipeline

    if is_multirun(overrides):
        return _fail("sweeps (-m) run one stage at a time: lightalign run <stage> -m key=a,b")
    run_dir = next((Path(o.split("=", 1)[1]) for o in overrides if o.startswith("hydra.run.dir=")), None)
    try:
        run_pipeline(name, overrides, run_dir)
    except PipelineInterrupted as err:
        print(f"lightalign: {err}", file=sys.stderr)
        return err.exit_code
    except LightalignError as err:
        return _fail(str(err))
    return 0


def run_command(target: str, overrides: list[str]) -> int:
    if target.endswith(".py") or target in STAGES:
        return run_recipe(target, overrides)
    pipeline = _pipeline_name(target)
    if pipeline:
        return run_pipeline_command(pipeline, overrides)
    return _fail(
        f"unknown stage or pipeline {target!r}; stages: {', '.join(STAGES)}; "
        f"pipelines: {', '.join(pipeline_names())} (or a recipe .py file)"
    )


def validate_command(target: str, overrides: list[str]) -> int:
    """Print the resolved config(s) of a stage, a recipe file or every stage of a pipeline."""
    from lightalign.commands.validate import compose_checked, recipe_config_source, render_config
    from lightalign.config.compose import ConfigSource

    run_dir = None  # a pipeline's: the files its stages hand each other do not exist yet
    if target.endswith(".py"):
        source, overrides = recipe_config_source(Path(target), overrides)
        checks = [(source, overrides)]
    elif target in STAGES:
        checks = [(ConfigSource(conf_dir(), STAGES[target][1], target), overrides)]
    elif _pipeline_name(target):
        from lightalign.pipeline import plan_pipeline

        passthrough = [o for o in overrides if not o.startswith("hydra.run.dir=")]
        run_dir = Path("outputs") / target / "RUN"
        checks = [(ConfigSource(conf_dir(), STAGES[s.name][1], s.name), s.overrides)
                  for s in plan_pipeline(_pipeline_name(target), passthrough, run_dir)]  # as `run` plans them
    else:
        return _fail(f"unknown stage or pipeline {target!r}; stages: {', '.join(STAGES)}; "
                     f"pipelines: {', '.join(pipeline_names())} (or a recipe .py file)")
    for source, stage_overrides in checks:
        cfg = compose_checked(source, stage_overrides, produced_under=run_dir)
        print(f"# ---- {source.label}: valid ----")
        print(render_config(cfg), end="")
    return 0


def list_options() -> int:
    """Print stages (with their recipe files), pipelines (with their stages), and every config group's options."""
    for stage, (recipe, config) in STAGES.items():
        state = "" if (recipes_dir() / recipe).is_file() else "  (recipe not installed)"
        print(f"stage {stage:<9} recipes/{recipe} --config-name {config}{state}")
    for name in pipeline_names():
        print(f"pipeline {name:<6} {' -> '.join(load_stages(name))}")
    for group in sorted(p for p in conf_dir().iterdir() if p.is_dir() and p.name != "pipeline"):
        options = sorted(f.stem for f in group.glob("*.yaml"))
        print(f"{group.name}: {', '.join(options)}")
    return 0


def copy_command(name: str, dest: str, force: bool) -> int:
    from lightalign.commands.cp import plan_copy, write_copy

    plan = plan_copy(name, dest)
    written = write_copy(plan, force=force)
    unchanged = len(plan.files) - len(written)
    print(f"copied {len(written)} file(s)" + (f" ({unchanged} already identical)" if unchanged else "") + ":")
    for path in written:
        print(f"  {path}")
    print(f"run: {plan.run_hint}")
    return 0


def report_command(run_dir: str) -> int:
    path = Path(run_dir)
    if not path.is_dir():
        return _fail(f"{run_dir} is not a directory")
    if (path / "multirun.yaml").is_file():  # a Hydra sweep directory
        from lightalign.commands.sweep import TABLE_FILE, write_sweep_table

        print(write_sweep_table(path))
        print(f"table: {path / TABLE_FILE}")
        return 0
    from lightalign.report import build_report

    report = build_report(path)
    print(report.table_markdown)
    print(f"report: {report.path}")
    return 0


def _quantization(choice: str):  # noqa: ANN202 (Quantization | None | "as-trained")
    from lightalign.models import Quantization

    return {"as-trained": "as-trained", "nf4": Quantization(), "none": None}[choice]


def _load_policy(model: str, quant: str, dense_weights: str):  # noqa: ANN202 (model, tokenizer, source)
    from lightalign.config.schema import DENSE_WEIGHTS, check_choice
    from lightalign.models.trained import load_model_source, resolve_model_source

    # the values of generation.dense_weights, checked here rather than by argparse: the schema loads hydra
    check_choice("--dense-weights", dense_weights, DENSE_WEIGHTS)
    source = resolve_model_source(model)
    if source.head != "causal-lm":
        raise LightalignError(f"{model} is a reward model (it scores answers); use a policy: sft, ppo or dpo")
    print(f"lightalign: loading {source.describe()}", file=sys.stderr, flush=True)
    loaded, tokenizer = load_model_source(source, quantization=_quantization(quant))
    return loaded, tokenizer, source


def chat_command(args: argparse.Namespace) -> int:
    from transformers import set_seed

    from lightalign.commands.chat import HELP, ChatSession, chat_loop, chat_once

    model, tokenizer, source = _load_policy(args.model, args.quant, args.dense_weights)
    set_seed(args.seed)
    session = ChatSession(model, tokenizer, system=args.system, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_p=args.top_p, dense_weights=args.dense_weights)
    if args.interactive or sys.stdin.isatty():
        print(f"lightalign chat with {source.describe()}; {HELP}", flush=True)
        chat_loop(session, sys.stdin, sys.stdout)
    else:
        try:
            chat_once(session, sys.stdin, sys.stdout)
        except ValueError as err:
            return _fail(str(err))
    return 0


def export_command(args: argparse.Namespace) -> int:
    from lightalign.commands.export import export_adapter, export_merged
    from lightalign.models.trained import resolve_model_source

    source = resolve_model_source(args.run_dir)
    out = Path(args.out)
    if args.merge:
        export_merged(source, out, dtype=args.dtype, force=args.force)
        print(f"merged {source.describe()} into a full-precision ({args.dtype}) model: {out}")
        print(f"load it: AutoModelForCausalLM.from_pretrained({str(out)!r})")
    else:
        export_adapter(source, out, force=args.force)
        print(f"adapter of {source.describe()}: {out}")
        print(f"load it: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), {str(out)!r})")
    return 0


def rank_command(args: argparse.Namespace) -> int:
    import torch

    from lightalign.commands.rank import rank_prompts
    from lightalign.data import load_prompt_examples
    from lightalign.generation import generate_answers
    from lightalign.rankings import resume_rankings

    if args.temperature <= 0:  # greedy decoding would give the same answer k times: nothing to rank
        raise LightalignError(f"rank samples {args.k} answers per prompt: --temperature must be > 0, "
                              f"got {args.temperature}")

    prompts = load_prompt_examples(args.prompts, limit=args.limit)
    resume_rankings(Path(args.out))  # a corrupt output file fails now, not after the model has loaded
    model, tokenizer, source = _load_policy(args.model, args.quant, args.dense_weights)

    def sample(prompt: list, n: int, seed: int) -> list[str]:
        torch.manual_seed(seed)
        answers = generate_answers(model, tokenizer, [prompt], num_samples=n, max_new_tokens=args.max_new_tokens,
                                   batch_size=n, temperature=args.temperature, top_p=args.top_p, desc="sampling",
                                   dense_weights=args.dense_weights)
        return [a.text for a in answers]

    rank_prompts(prompts, sample, Path(args.out), k=args.k, stdin=sys.stdin, out=sys.stdout, seed=args.seed,
                 model_name=source.describe())
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightalign", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run a stage, a pipeline or a recipe file with Hydra overrides"),
                       ("validate", "compose and check a config and print it; loads no model")):
        command = sub.add_parser(name, help=text)
        command.add_argument("--from", dest="from_dir", metavar="DIR",
                             help="use the recipes and conf/ of a folder made by `lightalign cp`")
        command.add_argument("target", help="stage, pipeline or recipe .py file")
        command.add_argument("overrides", nargs=argparse.REMAINDER, help="Hydra overrides, e.g. trainer.max_steps=2")
    cp = sub.add_parser("cp", help="copy a recipe (+ the configs it needs), a pipeline or a config option")
    cp.add_argument("name", help="stage (sft, dpo...), pipeline (rlhf, pipeline/dpo) or group/option (lora/default)")
    cp.add_argument("dest", help="a .py file or a folder (a .yaml file or a folder for a config option)")
    cp.add_argument("--force", action="store_true", help="overwrite files that differ from the copy")
    sub.add_parser("ls", help="list stages, pipelines and config options")
    report = sub.add_parser("report", help="(re)build the report of a pipeline run or the table of a sweep")
    report.add_argument("run_dir")

    def model_options(command: argparse.ArgumentParser, temperature: float, max_new_tokens: int) -> None:
        command.add_argument("--quant", choices=QUANT_CHOICES, default="as-trained",
                             help="load the base 4-bit (nf4), in full precision (none) or as the stage trained it")
        command.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
        command.add_argument("--top-p", type=float, default=0.9)
        command.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
        command.add_argument("--seed", type=int, default=0)
        command.add_argument("--dense-weights", default="auto", metavar="auto|on|off",
                             help="decode with a dense copy of a 4-bit base (generation.dense_weights; "
                                  "docs/generation.md)")

    chat = sub.add_parser("chat", help="chat with a trained stage (DIR) or a base model, streaming tokens")
    chat.add_argument("model", metavar="DIR", help="a stage's run directory, an adapter folder or a model name")
    chat.add_argument("--system", help="a system message for the whole conversation")
    chat.add_argument("--interactive", action="store_true",
                      help="read one message per line even when stdin is not a terminal")
    model_options(chat, temperature=0.7, max_new_tokens=256)
    export = sub.add_parser("export", help="export a stage's adapter, or merge it into a full-precision base")
    export.add_argument("run_dir", metavar="DIR")
    export.add_argument("--out", required=True, help="the folder to write (must be new or empty, or --force)")
    export.add_argument("--merge", action="store_true", help="merge into a dequantised copy of the base")
    export.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="of the merged weights")
    export.add_argument("--force", action="store_true", help="replace OUT")
    rank = sub.add_parser("rank", help="rank sampled answers by hand into the reward stage's ranking format")
    rank.add_argument("--model", required=True, help="a stage's run directory, an adapter folder or a model name")
    rank.add_argument("--prompts", default="demo:prompts", help="a prompt source (file, demo:prompts, Hub id)")
    rank.add_argument("--out", required=True, help="the JSONL file rankings are appended to")
    rank.add_argument("-k", type=int, default=4, help="answers per prompt")
    rank.add_argument("--limit", type=int, help="rank at most the first N prompts of the source")
    model_options(rank, temperature=1.0, max_new_tokens=64)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "ls": lambda args: list_options(),
    "cp": lambda args: copy_command(args.name, args.dest, args.force),
    "report": lambda args: report_command(args.run_dir),
    "chat": chat_command,
    "export": export_command,
    "rank": rank_command,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(strip_launcher_args(sys.argv[1:] if argv is None else argv))
    try:
        if args.command in ("run", "validate"):
            with _recipes_from(args.from_dir):
                command = run_command if args.command == "run" else validate_command
                return command(args.target, args.overrides)
        return COMMANDS[args.command](args)
    except LightalignError as err:
        if os.environ.get("LIGHTALIGN_DEBUG"):
            raise
        return _fail(str(err).strip().splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
