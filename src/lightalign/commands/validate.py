"""``lightalign validate``: compose and check a stage's (or every stage of a pipeline's) config, load no model.

    lightalign validate sft model=tiny-random trainer.max_steps=2
    lightalign validate ./my_dpo.py dpo.beta=0.2          # a copied recipe, with its own conf/
    lightalign validate rlhf trainer.max_steps=2          # every stage, overrides routed as `run` would

Checks, in order: the config composes (unknown keys, groups and options are named), every value has its
schema's type and passes its schema's checks (``OmegaConf.to_object``, e.g. ``trainer.report_to``), nothing
mandatory (``???``) is left, and the local files it names exist. Prints the resolved config.
"""

from __future__ import annotations

import ast
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lightalign.config.compose import ConfigSource, compose_config, config_errors_in_one_line
from lightalign.data.readers import LOCAL_SUFFIXES
from lightalign.errors import ConfigError, DataError, ModelNotFoundError

DATA_KEYS = ("data.train", "data.eval", "data.prompts")


def recipe_config_source(recipe: Path, overrides: list[str]) -> tuple[ConfigSource, list[str]]:
    """The config folder and name of a recipe file, read from its ``@hydra.main(...)`` decorator.

    A ``--config-name X`` (or ``-cn X``) in ``overrides`` replaces the decorator's name and is removed.
    """
    if not recipe.is_file():
        raise ConfigError(f"recipe file {recipe} does not exist")
    options: dict[str, str] = {}
    for node in ast.walk(ast.parse(recipe.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "main":
            options.update({kw.arg: kw.value.value for kw in node.keywords if isinstance(kw.value, ast.Constant)})
    if "config_path" not in options or "config_name" not in options:
        raise ConfigError(f"{recipe}: no @hydra.main(config_path=..., config_name=...) found")
    name, rest = options["config_name"], []
    args = iter(overrides)
    for arg in args:
        if arg in ("--config-name", "-cn"):
            name = next(args, name)
        elif arg.startswith("--config-name="):
            name = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    folder = (recipe.parent / options["config_path"]).resolve()
    return ConfigSource(folder, name, f"{recipe} ({name})"), rest


def compose_checked(source: ConfigSource, overrides: list[str], produced_under: Path | None = None) -> DictConfig:
    """Compose ``source`` with ``overrides`` and check it (see the module docstring); no model is loaded.

    Files under ``produced_under`` (a pipeline's run directory) are not checked: earlier stages write them.

    Raises:
        ConfigError: naming the first problem, in one line.
    """
    cfg = compose_config(source, overrides)
    with config_errors_in_one_line(source):
        OmegaConf.to_object(cfg)  # types, schema checks (__post_init__), and `???` left unset
    check_local_paths(cfg, produced_under)
    return cfg


def check_local_paths(cfg: DictConfig, produced_under: Path | None = None) -> None:
    """Raise if a data source or the base model names a local path that does not exist.

    Sources that are not local (``demo:*``, Hub ids, ``lightalign:*`` models) are not checked: that would
    mean downloading or building them; nor are files under ``produced_under``, which an earlier stage of the
    pipeline writes (the reward stage's ``data.train=DIR/rankings/rankings.jsonl``).
    """
    for key in DATA_KEYS:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str) and not value.startswith("demo:"):
            path = Path(value).expanduser()
            pending = produced_under is not None and path.is_relative_to(produced_under)
            if path.suffix.lower() in LOCAL_SUFFIXES and not path.is_file() and not pending:
                raise DataError(f"{key}={value}", "file not found")
    model = OmegaConf.select(cfg, "model.name_or_path")
    if isinstance(model, str) and model.startswith((".", "/", "~")) and not Path(model).expanduser().exists():
        raise ModelNotFoundError(f"model folder {model} does not exist (model.name_or_path)")


def render_config(cfg: DictConfig) -> str:
    """The resolved config as YAML (what the run would write to ``DIR/config.yaml``)."""
    return OmegaConf.to_yaml(cfg, resolve=True)
