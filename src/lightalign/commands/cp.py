"""``lightalign cp``: copy a recipe, a pipeline or one config option into a folder of yours, to edit and run.

    lightalign cp dpo ./my_dpo.py            # my_dpo.py + conf/ (dpo.yaml and every config group it uses)
    lightalign cp sft ./mine/                # mine/sft.py + mine/conf/ (sft.yaml, pretrain.yaml, their groups)
    lightalign cp rlhf ./mine/               # mine/sft.py, reward.py, ppo.py + mine/conf/ (+ pipeline/rlhf.yaml)
    lightalign cp lora/default ./mine/conf/lora/wide.yaml    # one option of a config group

The copied recipe's ``config_path`` is rewritten to the ``conf/`` folder next to it, so
``lightalign run ./my_dpo.py [overrides]`` and ``python ./my_dpo.py [overrides]`` run the copy with the copied
configs, and editing either changes the run. The typed schemas still come from the installed package
(the recipe calls ``register_configs()``), so a typo in an edited YAML still fails naming the key. A copied
pipeline runs with ``lightalign run --from ./mine rlhf``.

Nothing that differs from what would be written is overwritten without ``force``; files already equal to the
copy are left alone, so several recipes can share one folder and one ``conf/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from lightalign.errors import ConfigError
from lightalign.paths import conf_dir, recipes_dir
from lightalign.pipeline import STAGE_RECIPES, load_stages, pipeline_names

COPIED_CONF = "conf"
_CONFIG_PATH = re.compile(r"""config_path\s*=\s*["']\.\./conf["']""")
_CONFIG_NAME = re.compile(r"""config_name\s*=\s*["'][\w-]+["']""")


class CopyConflict(ConfigError):
    """The destination holds files that differ from the copy (pass ``force`` to overwrite them)."""


@dataclass
class CopyPlan:
    """What a copy writes: ``files`` maps each destination path to its content."""

    files: dict[Path, bytes] = field(default_factory=dict)
    run_hint: str = ""

    def add_file(self, source: Path, target: Path) -> None:
        self.files[target] = source.read_bytes()


def _defaults_of(path: Path) -> list:
    data = OmegaConf.to_container(OmegaConf.load(path)) or {}
    return list(data.get("defaults", [])) if isinstance(data, dict) else []


def configs_needed(primary: str, conf: Path | None = None) -> tuple[list[str], list[str]]:
    """The primary configs and config groups that ``conf/<primary>.yaml`` needs, from its defaults lists.

    Read statically (no Hydra compose), following primaries that include other primaries (``pretrain`` →
    ``sft``) and defaults lists inside group options.

    Example:
        >>> configs_needed("pretrain")[0]
        ['pretrain', 'sft']
    """
    conf = conf or conf_dir()
    primaries: list[str] = []
    groups: list[str] = []
    todo = [conf / f"{primary}.yaml"]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if path.parent == conf:
            primaries.append(path.stem)
        for entry in _defaults_of(path):
            if isinstance(entry, str):  # `_self_`, a schema from the ConfigStore, or another primary config
                if (conf / f"{entry}.yaml").is_file():
                    todo.append(conf / f"{entry}.yaml")
                continue
            for key in entry:
                group = key.removeprefix("override ").strip().lstrip("/")
                if group.startswith("hydra/") or group in groups or not (conf / group).is_dir():
                    continue
                groups.append(group)
                todo.extend(sorted((conf / group).rglob("*.yaml")))
    return primaries, groups


def _recipe_text(recipe: Path, config_name: str | None) -> str:
    text = recipe.read_text(encoding="utf-8")
    text, found = _CONFIG_PATH.subn(f'config_path="{COPIED_CONF}"', text)
    if found != 1:
        raise ConfigError(f"{recipe}: expected one @hydra.main(config_path=\"../conf\"), found {found}")
    if config_name:  # `lightalign cp pretrain` gives a recipe that runs the pretrain config by default
        text = _CONFIG_NAME.sub(f'config_name="{config_name}"', text, count=1)
    return text


def _add_recipe(plan: CopyPlan, stage: str, target: Path) -> None:
    recipe_file, config_name = STAGE_RECIPES[stage]
    source = recipes_dir() / recipe_file
    if not source.is_file():
        raise ConfigError(f"the {stage} recipe ({source}) is not installed")
    header = (f"# Copied from lightalign's recipes/{recipe_file} by `lightalign cp`; its configs are in "
              f"{COPIED_CONF}/ next to this file.\n")
    plan.files[target] = (header + _recipe_text(source, config_name)).encode("utf-8")
    conf = conf_dir()
    folder = target.parent / COPIED_CONF
    primary_names = [cfg for file, cfg in STAGE_RECIPES.values() if file == recipe_file]
    for primary in dict.fromkeys([config_name, *primary_names]):  # the stages that share this recipe file
        if not (conf / f"{primary}.yaml").is_file():
            continue
        primaries, groups = configs_needed(primary, conf)
        for name in primaries:
            plan.add_file(conf / f"{name}.yaml", folder / f"{name}.yaml")
        for group in groups:
            for source_file in sorted((conf / group).rglob("*.yaml")):
                plan.add_file(source_file, folder / source_file.relative_to(conf))


def plan_copy(name: str, dest: str | Path) -> CopyPlan:
    """Work out what ``lightalign cp NAME DEST`` writes (nothing is written here).

    Args:
        name: a stage (``sft``, ``dpo``...), a pipeline (``rlhf``, ``pipeline/dpo``) or a config option
            (``lora/default``).
        dest: for a stage, a ``.py`` file or a folder; for a pipeline, a folder; for a config option, a
            ``.yaml`` file or a config folder (the option lands in ``DEST/<group>/<option>.yaml``).
    """
    dest = Path(dest)
    plan = CopyPlan()
    if name in STAGE_RECIPES:
        target = dest if dest.suffix == ".py" else dest / STAGE_RECIPES[name][0]
        _add_recipe(plan, name, target)
        plan.run_hint = f"lightalign run {target} [overrides]   (or: python {target} [overrides])"
        return plan
    pipeline = name.removeprefix("pipeline/")
    if pipeline in pipeline_names():
        if dest.suffix:
            raise ConfigError(f"a pipeline is copied into a folder, not {dest}")
        for stage in load_stages(pipeline):
            _add_recipe(plan, stage, dest / STAGE_RECIPES[stage][0])
        pipeline_file = Path("pipeline") / f"{pipeline}.yaml"
        plan.add_file(conf_dir() / pipeline_file, dest / COPIED_CONF / pipeline_file)
        plan.run_hint = f"lightalign run --from {dest} {pipeline} [overrides]"
        return plan
    source = conf_dir() / f"{name.removesuffix('.yaml')}.yaml"
    if "/" in name and source.is_file():
        group = source.parent.relative_to(conf_dir())
        target = dest if dest.suffix in (".yaml", ".yml") else dest / group / source.name
        plan.add_file(source, target)
        plan.run_hint = f"select it with {group}={target.stem}"
        if target.parent.name == group.name:  # DEST/<group>/<option>.yaml: DEST works as a config folder
            plan.run_hint += f" (a stage: lightalign run <stage> --config-dir {target.parent.parent} ...)"
        return plan
    raise ConfigError(f"nothing named {name!r} to copy; stages: {', '.join(STAGE_RECIPES)}; pipelines: "
                      f"{', '.join(pipeline_names())}; or a config option such as lora/default")


def write_copy(plan: CopyPlan, *, force: bool = False) -> list[Path]:
    """Write the planned files; returns those written (files already equal to the copy are skipped).

    Raises:
        CopyConflict: if a destination file exists with other content and ``force`` is false; then nothing
            is written.
    """
    differing = [path for path, data in plan.files.items() if path.exists() and path.read_bytes() != data]
    if differing and not force:
        more = f" and {len(differing) - 3} more" if len(differing) > 3 else ""
        shown = ", ".join(str(p) for p in differing[:3]) + more
        raise CopyConflict(f"would overwrite {len(differing)} changed file(s): {shown}; pass --force to overwrite")
    written = []
    for path, data in plan.files.items():
        if path.exists() and path.read_bytes() == data:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written
