"""``lightalign validate``: compose + check without loading a model; every problem is one line, exit 2."""

from __future__ import annotations

import pytest
import yaml

from lightalign.cli import main as cli


def test_prints_the_resolved_config(capsys):
    assert cli(["validate", "sft", "model=tiny-random", "trainer.max_steps=3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# ---- sft: valid ----\n")
    cfg = yaml.safe_load(out)
    assert cfg["trainer"]["max_steps"] == 3 and cfg["model"]["name_or_path"] == "lightalign:tiny-random"
    assert "hydra" not in cfg


def test_a_pipeline_validates_every_stage_with_routed_overrides(capsys):
    assert cli(["validate", "pipeline/dpo", "trainer.max_steps=2", "dpo.dpo.beta=0.3"]) == 0
    out = capsys.readouterr().out
    assert "# ---- sft: valid ----" in out and "# ---- dpo: valid ----" in out
    dpo = yaml.safe_load(out.split("# ---- dpo: valid ----")[1])
    assert dpo["dpo"]["beta"] == 0.3 and dpo["trainer"]["max_steps"] == 2
    assert dpo["dpo"]["sft_adapter"].endswith("sft")  # handed off by stage name


def test_a_pipeline_validates_although_the_files_its_stages_hand_on_do_not_exist_yet(capsys):
    assert cli(["validate", "rlhf", "trainer.max_steps=2"]) == 0  # reward reads rankings' rankings.jsonl
    headers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# ----")]
    assert headers == ["# ---- sft: valid ----", "# ---- rankings: valid ----", "# ---- reward: valid ----",
                       "# ---- ppo: valid ----"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["lora.rnak=8"], "Key 'rnak' not in 'LoraSettings'"),
        (["lora.r=abc"], "could not be converted to Integer"),
        (["model=nope"], "tiny-random"),
        (["data=jsonl"], "key: data.train"),  # mandatory value left unset
        (["data.train=missing.jsonl"], "data.train=missing.jsonl: file not found"),
        (["model.name_or_path=./no/such/model"], "model folder ./no/such/model does not exist (model.name_or_path)"),
        (["trainer.report_to=comet"], "valid: none, tensorboard, wandb, mlflow"),
    ],
)
def test_bad_configs_fail_in_one_line(capsys, overrides, expected):
    assert cli(["validate", "sft", *overrides]) == 2
    captured = capsys.readouterr()
    assert expected in captured.err and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err and "valid ----" not in captured.out


@pytest.mark.parametrize(
    ("stage", "overrides", "expected"),
    [
        ("ppo", ["ppo.kl_estimator=k9"], "ppo.kl_estimator='k9' is not one of k1, k3"),
        ("ppo", ["ppo.value_init=bogus"], "ppo.value_init='bogus' is not one of auto, reward, fresh"),
        ("sft", ["data.overlong=sometimes"], "data.overlong='sometimes' is not one of error, truncate, skip"),
        ("sft", ["data.format=pairs"], "data.format: unknown data format 'pairs'; valid: auto, messages"),
        ("reward", ["data.format=alpaca"], "data.format: unknown data format 'alpaca'; valid: auto, pairs, hh"),
        ("reward", ["data.invalid=ignore"], "data.invalid='ignore' is not one of error, skip"),
        ("dpo", ["data.eval_fraction=2"], "data.eval_fraction=2.0 must be in [0, 1)"),
        ("sft", ["trainer.precision=bf61"], "trainer.precision='bf61' is not one of auto, bf16, fp16, fp32"),
        ("dpo", ["dpo.loss_type=sigmoid2"], "dpo.loss_type='sigmoid2' is not one of sigmoid, hinge, ipo"),
        ("rankings", ["judge=none"], "rank with a judge (judge=gold_judge or judge._target_=pkg.fn) or a person's"),
        ("ppo", ["generation.dense_weights=yes"], "generation.dense_weights='yes' is not one of auto, on, off"),
    ],
    ids=["kl-estimator", "value-init", "overlong", "lm-format", "preference-format", "invalid", "eval-fraction",
         "precision", "loss-type", "no-judge", "dense-weights"],
)
def test_bad_choices_fail_before_any_data_or_model_loads(capsys, stage, overrides, expected):
    assert cli(["validate", stage, *overrides]) == 2
    captured = capsys.readouterr()
    assert expected in captured.err and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err and "valid ----" not in captured.out


def test_every_stage_has_the_generation_settings(capsys):
    # PPO composes only with a reward (a config-only check)
    for stage, *more in (("sft",), ("rankings",), ("reward",), ("dpo",), ("ppo", "reward=gold_judge"), ("grpo",)):
        assert cli(["validate", stage, "generation.dense_weights=off", *more]) == 0
        assert yaml.safe_load(capsys.readouterr().out)["generation"] == {"dense_weights": "off"}


def test_rankings_by_a_person_need_no_judge(capsys):
    assert cli(["validate", "rankings", "judge=none", "rankings.human=ranked.jsonl"]) == 0
