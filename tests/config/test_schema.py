"""Stage schemas check their values when ``OmegaConf.to_object`` builds them, i.e. at compose time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import lightalign
from lightalign.config.schema import (
    DataSettings,
    DPOOptions,
    GenerationSettings,
    GRPOOptions,
    GRPOStageConfig,
    PPOOptions,
    PPOSettings,
    PPOStageConfig,
    PreferenceDataSettings,
    RankingsOptions,
    RankingsStageConfig,
    TrainerSettings,
)
from lightalign.errors import ConfigError


def test_an_unknown_kl_estimator_names_the_valid_ones():
    assert PPOSettings(kl_estimator="k3").kl_estimator == "k3"
    with pytest.raises(ConfigError, match=r"ppo.kl_estimator='k9' is not one of k1, k3"):
        PPOSettings(kl_estimator="k9")


def test_ppo_options_check_value_init_and_the_inherited_ppo_settings():
    assert PPOOptions(value_init="fresh").value_init == "fresh"
    with pytest.raises(ConfigError, match=r"ppo.value_init='bogus' is not one of auto, reward, fresh"):
        PPOOptions(value_init="bogus")
    with pytest.raises(ConfigError, match="ppo.kl_estimator='k9'"):  # PPOSettings' own check still runs
        PPOOptions(kl_estimator="k9")


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: DataSettings(overlong="sometimes"), "data.overlong='sometimes' is not one of error, truncate, skip"),
        (lambda: DataSettings(format="pairs"), "data.format: unknown data format 'pairs'; valid: auto, messages, "),
        (lambda: PreferenceDataSettings(format="alpaca"), "unknown data format 'alpaca'; valid: auto, pairs, hh, "),
        (lambda: PreferenceDataSettings(overlong="sometimes"), "data.overlong='sometimes'"),  # inherited
        (lambda: PreferenceDataSettings(invalid="ignore"), "data.invalid='ignore' is not one of error, skip"),
        (lambda: PreferenceDataSettings(eval_fraction=1.0), r"data.eval_fraction=1.0 must be in \[0, 1\)"),
        (lambda: TrainerSettings(precision="bf61"), "trainer.precision='bf61' is not one of auto, bf16, fp16, fp32"),
        (lambda: TrainerSettings(report_to="comet"), "valid: none, tensorboard, wandb, mlflow"),
        (lambda: DPOOptions(loss_type="sigmoïd"), "dpo.loss_type='sigmoïd' is not one of sigmoid, hinge, ipo"),
        (lambda: DPOOptions(sft_weight=-1.0), r"dpo.sft_weight=-1.0: the NLL weight must be >= 0"),
        (lambda: RankingsStageConfig(judge={"_target_": None}), "rank with a judge .* or a person's rankings"),
        (lambda: RankingsOptions(pair_margin=-0.1), r"rankings.pair_margin=-0.1: give a score gap >= 0"),
        (lambda: RankingsOptions(pair_margin=0.4, human="r.jsonl"), "a person's rankings have no scores"),
        (lambda: GenerationSettings(dense_weights="yes"), "generation.dense_weights='yes' is not one of auto, on, off"),
    ],
    ids=["overlong", "lm-format", "preference-format", "preference-overlong", "invalid", "eval-fraction",
         "precision", "report-to", "loss-type", "sft-weight", "no-judge", "pair-margin", "pair-margin-human",
         "dense-weights"],
)
def test_bad_choices_are_config_errors_naming_the_key(build, expected):
    with pytest.raises(ConfigError, match=expected):
        build()


def test_good_choices_pass():
    assert PreferenceDataSettings(format="hh", invalid="skip", eval_fraction=0.0).format == "hh"
    assert DataSettings(format="text", overlong="truncate").overlong == "truncate"
    assert TrainerSettings(precision="fp32").precision == "fp32"
    assert DPOOptions(loss_type="ipo").loss_type == "ipo"
    assert RankingsStageConfig(judge={"_target_": "lightalign.demo.GoldJudge"}).judge is not None
    assert RankingsStageConfig(rankings=RankingsOptions(human="ranked.jsonl")).rankings.human == "ranked.jsonl"


GOLD = {"fn": {"_target_": "lightalign.demo.GoldJudge"}}


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: GRPOOptions(group_size=1), "grpo.group_size=1: a group needs at least 2 answers"),
        (lambda: GRPOOptions(beta=-0.1), "grpo.beta=-0.1: the KL weight must be >= 0"),
        (lambda: GRPOOptions(temperature=0.0), "grpo.temperature=0.0: sampling needs a temperature > 0"),
        (lambda: GRPOOptions(top_p=1.5), r"grpo.top_p=1.5: give a value in \(0, 1\]"),
        (lambda: GRPOOptions(clip_range=0.0), "grpo.clip_range=0.0"),
        (lambda: GRPOOptions(scale_eps=0.0), "grpo.scale_eps=0.0"),
        (lambda: GRPOOptions(num_iterations=0), "grpo.num_iterations=0: give a positive number"),
        (lambda: GRPOOptions(batch_size=0), "grpo.batch_size=0: give a positive number"),
        (lambda: GRPOOptions(advantage="ppo"), "grpo.advantage='ppo' is not one of grpo, rloo, dr_grpo"),
        (lambda: GRPOOptions(loss_aggregation="mean"), "grpo.loss_aggregation='mean' is not one of auto, token"),
        (lambda: GRPOOptions(kl_estimator="k2"), "grpo.kl_estimator='k2' is not one of k1, k3"),
        (lambda: GRPOOptions(reward_model_weight=float("nan")), "grpo.reward_model_weight=nan"),
        (lambda: GRPOStageConfig(), "GRPO has no reward"),
        (lambda: GRPOStageConfig(rewards={"gold": {"fn": {"_target_": None}}}), r"rewards.gold.fn._target_ is not set"),
        (lambda: GRPOStageConfig(rewards={"gold": {**GOLD, "wieght": 2}}), "rewards.gold: unknown key.* wieght"),
        (lambda: GRPOStageConfig(rewards={"gold": {**GOLD, "weight": "high"}}), "rewards.gold.weight='high' is not"),
        (lambda: GRPOStageConfig(rewards={"gold": GOLD}, trainer=TrainerSettings(per_device_train_batch_size=5)),
         "32 answers per step must be a multiple of .* = 5"),
        (lambda: GRPOStageConfig(rewards={"gold": GOLD}, data=DataSettings(train="x", max_length=48)),
         "data.max_length=48 leaves no room for prompts of answers of grpo.max_new_tokens=48"),
    ],
    ids=["group-size", "beta", "temperature", "top-p", "clip", "eps", "iterations", "batch", "advantage",
         "aggregation", "kl-estimator", "rm-weight", "no-reward", "no-target", "weight-typo", "weight-type",
         "minibatch", "no-room"],
)
def test_bad_grpo_settings_are_config_errors_naming_the_key(build, expected):
    with pytest.raises(ConfigError, match=expected):
        build()


def test_grpo_rewards_become_typed_parts_and_auto_aggregation_follows_the_advantage():
    run = GRPOStageConfig(rewards={"gold": {**GOLD, "weight": 2}})
    assert run.rewards["gold"].weight == 2.0 and run.rewards["gold"].fn == GOLD["fn"]
    assert GRPOStageConfig(grpo=GRPOOptions(reward_model="reward_dir")).rewards == {}  # a reward model alone is enough
    assert GRPOOptions().aggregation == "token"
    assert GRPOOptions(advantage="dr_grpo").aggregation == "constant"  # Dr. GRPO: no length normalisation
    assert GRPOOptions(advantage="dr_grpo", loss_aggregation="sequence").aggregation == "sequence"  # asked for


def test_the_schema_imports_no_torch():
    # `lightalign validate` imports the schemas: checking a config must not pay for importing torch
    code = "import sys, lightalign.config.schema; assert 'torch' not in sys.modules, 'torch was imported'"
    src = str(Path(lightalign.__file__).parents[1])  # the lightalign under test, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: PPOStageConfig(), "set exactly one reward"),
        (lambda: PPOStageConfig(ppo=PPOOptions(reward_model="r"), reward={"_target_": "pkg.fn"}), "exactly one reward"),
        (lambda: PPOStageConfig(ppo=PPOOptions(reward_model="r", batch_size=6),
                                trainer=TrainerSettings(per_device_train_batch_size=4)),
         r"ppo.batch_size=6 must be a multiple of .* = 4"),
        (lambda: PPOStageConfig(ppo=PPOOptions(reward_model="r"), data=DataSettings(train="x", max_length=48)),
         "data.max_length=48 leaves no room for prompts of answers of ppo.max_new_tokens=48"),
        (lambda: PPOOptions(sft_weight=-1.0), r"ppo.sft_weight=-1.0: give a finite weight >= 0"),
        (lambda: PPOOptions(sft_weight=float("inf")), r"ppo.sft_weight=inf: give a finite weight >= 0"),
        (lambda: GRPOOptions(sft_weight=float("nan")), r"grpo.sft_weight=nan: give a finite weight >= 0"),
    ],
    ids=["no-reward", "two-rewards", "minibatch", "no-room", "sft-weight", "sft-weight-inf", "grpo-sft-weight"],
)
def test_bad_ppo_settings_are_config_errors_at_compose_time(build, expected):
    with pytest.raises(ConfigError, match=expected):
        build()


def test_a_ppo_config_with_one_reward_is_accepted():
    assert PPOStageConfig(ppo=PPOOptions(reward_model="r")).ppo.reward_model == "r"
    assert PPOStageConfig(reward={"_target_": "lightalign.demo.GoldJudge"}).reward["_target_"]
