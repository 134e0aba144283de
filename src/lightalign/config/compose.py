"""Composing a stage's config outside ``@hydra.main``: ``lightalign validate``, the pre-flight check of
``lightalign run`` and the pipeline's planning all compose here, so a bad override reads the same in each.

A failure is one line naming the config, the problem, the key, the options Hydra lists for a group, and for a
misspelt key the closest one the config has::

    sft: Could not override 'trainer.max_step'. (Key 'max_step' not in 'TrainerSettings'); did you mean
    trainer.max_steps?

(one line, folded here).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightalign.config.schema import register_configs
from lightalign.errors import ConfigError


@dataclass
class ConfigSource:
    """Where a recipe's configs live and which primary config it composes; ``label`` starts its errors."""

    config_dir: Path
    config_name: str
    label: str


def compose_config(source: ConfigSource, overrides: list[str]) -> DictConfig:
    """``source``'s config with ``overrides``, as ``@hydra.main`` would compose it (types not yet checked:
    ``OmegaConf.to_object`` does that, inside :func:`config_errors_in_one_line` for the same message).

    Raises:
        ConfigError: the composition failed; one line (see the module docstring).
    """
    from hydra import compose, initialize_config_dir

    register_configs()
    with config_errors_in_one_line(source), initialize_config_dir(config_dir=str(source.config_dir),
                                                                   version_base="1.3"):
        return compose(config_name=source.config_name, overrides=overrides)


@contextmanager
def config_errors_in_one_line(source: ConfigSource) -> Iterator[None]:
    """Inside the block, Hydra's and OmegaConf's errors become one-line :class:`ConfigError` s for ``source``."""
    from hydra.errors import HydraException

    try:
        yield
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"{source.label}: {_one_line(source, err)}") from None


def _one_line(source: ConfigSource, err: BaseException) -> str:
    cause = err.__cause__ if err.__cause__ and str(err.__cause__) not in str(err) else None
    message = str(err).strip().splitlines()[0] + (f" ({str(cause).strip().splitlines()[0]})" if cause else "")
    key = getattr(err, "full_key", None)  # OmegaConf names the key on a second line: keep it on the first
    options = _available_options(str(err))
    message += (f" [key: {key}]" if key else "") + (f"; valid: {', '.join(options)}" if options else "")
    missing = key or getattr(err.__cause__, "full_key", None)
    if missing and "not in" in message:  # a misspelt key: name the closest one the config has
        message += "".join(f"; did you mean {near}?" for near in _near_keys(source, missing)[:1])
    return message


def _near_keys(source: ConfigSource, key: str) -> list[str]:
    """Keys of ``source``'s default config spelt like ``key`` (``trainer.max_step`` -> ``trainer.max_steps``)."""
    from hydra import compose, initialize_config_dir

    parent, _, name = key.rpartition(".")
    with initialize_config_dir(config_dir=str(source.config_dir), version_base="1.3"):
        defaults = compose(config_name=source.config_name)
    node = OmegaConf.select(defaults, parent) if parent else defaults
    if not isinstance(node, DictConfig):
        return []
    return [f"{parent}.{near}" if parent else near for near in difflib.get_close_matches(name, list(node.keys()))]


def _available_options(message: str) -> list[str]:
    """The options Hydra lists, one per indented line, after "Available options in 'group':"."""
    lines = message.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Available options")), None)
    if start is None:
        return []
    options = []
    for line in lines[start + 1 :]:
        if not line.startswith(("\t", " ")) or not line.strip():
            break
        options.append(line.strip())
    return options
