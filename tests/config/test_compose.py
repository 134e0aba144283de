"""Every option of every config group composes with every primary config that uses the group.

Groups and options are found recursively under conf/, so a new file is tested without editing this test.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from lightalign.config import register_configs
from lightalign.paths import conf_dir

CONF = conf_dir()
PRIMARIES = sorted(p.stem for p in CONF.glob("*.yaml"))
OPTIONS = sorted(
    (str(path.parent.relative_to(CONF)), path.stem)
    for path in CONF.rglob("*.yaml")
    if path.parent != CONF and path.parent.name != "pipeline"  # pipelines: see test_pipeline.py
)

register_configs()


def _compose(primary: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=primary, overrides=overrides, return_hydra_config=True)


@functools.cache
def _groups_of(primary: str) -> set[str]:
    return set(_compose(primary, []).hydra.runtime.choices)


def test_there_is_something_to_test():
    assert {"sft", "pretrain"} <= set(PRIMARIES)
    assert ("model", "tiny-random") in OPTIONS and ("quant", "nf4") in OPTIONS


@pytest.mark.parametrize("primary", PRIMARIES)
def test_primary_composes_and_is_typed(primary):
    cfg = _compose(primary, [])
    del cfg.hydra
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert cfg.stage


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group, option):
    users = [p for p in PRIMARIES if group in _groups_of(p)]
    assert users, f"{group}/{option}.yaml is used by no primary config"
    for primary in users:
        cfg = _compose(primary, [f"{group}={option}"])
        del cfg.hydra  # hydra.job.num only exists inside a multirun
        # interpolations resolve, types hold; `???` (e.g. data=jsonl's data.train) is left for the user
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("lora.rnak=8", "rnak"),
        ("trainer.max_stpes=2", "max_stpes"),
        ("model=no-such-model", "tiny-random"),  # the error lists the valid options
    ],
)
def test_typos_fail_at_compose_time_naming_the_key(override, expected):
    with pytest.raises(ConfigCompositionException) as err:
        _compose("sft", [override])
    assert expected in str(err.value) + str(err.value.__cause__)


def test_wrong_type_fails_at_compose_time():
    with pytest.raises((ConfigCompositionException, ValidationError), match="r"):
        _compose("sft", ["lora.r=abc"])


def test_conf_dir_is_the_source_tree():
    assert CONF == Path(__file__).resolve().parents[2] / "conf"


def test_grpo_rewards_combine_options_and_take_a_part_from_the_command_line():
    cfg = _compose("grpo", ["rewards=[correct,gold_judge]", "rewards.gold.weight=0.5",
                            "+rewards.mine.fn._target_=my_pkg.reward"])
    del cfg.hydra
    run = OmegaConf.to_object(cfg)
    assert {name: part.weight for name, part in run.rewards.items()} == {"correct": 1.0, "gold": 0.5, "mine": 1.0}
    assert run.rewards["correct"].fn == {"_target_": "lightalign.demo.GoldJudge", "part": "correct"}
